from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardroute.errors import RemoteProtocolError
from shardroute.protocol.identify import (
    IdentifyError,
    IdentifyInfo,
    decode_identify,
    encode_identify,
)


def test_round_trip_and_merge_keeps_missing_fields() -> None:
    full = IdentifyInfo(
        public_key=b"key",
        listen_addrs=(bytes.fromhex("047f000001060fa1"),),
        protocols=("/ipfs/id/1.0.0", "/icn/kad/1.0.0"),
        agent_version="go-libp2p/0.24",
        present=frozenset({"public_key", "listen_addrs", "protocols", "agent_version"}),
    )
    decoded = decode_identify(encode_identify(full))
    assert decoded.protocols == full.protocols and decoded.listen_addrs == full.listen_addrs
    push = decode_identify(
        encode_identify(
            IdentifyInfo(protocols=("/ipfs/id/1.0.0",), present=frozenset({"protocols"}))
        )
    )
    merged = push.merged_over(decoded)
    assert merged.protocols == ("/ipfs/id/1.0.0",)  # the peer left server mode
    assert merged.agent_version == "go-libp2p/0.24" and merged.public_key == b"key"


def test_garbage_is_an_identify_error() -> None:
    with pytest.raises(IdentifyError):
        decode_identify(b"\x0a\xff\xff")


@given(st.binary(max_size=300))
def test_fuzz(data: bytes) -> None:
    try:
        decode_identify(data)
    except RemoteProtocolError:
        pass
