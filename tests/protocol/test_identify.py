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


@pytest.mark.parametrize(
    ("field", "value"),
    [("protocols", b"/ipfs/\x9a\x8c"), ("agentVersion", b"\xff\xfe"), ("protocolVersion", b"\xc3")],
)
def test_non_utf8_strings_are_an_identify_error(field: str, value: bytes) -> None:
    # Found by bench/fuzz.py identify: python-protobuf returned bytes for these proto2 strings.
    tags = {"protocols": 0x1A, "agentVersion": 0x32, "protocolVersion": 0x2A}
    body = bytes([tags[field], len(value)]) + value
    with pytest.raises(IdentifyError, match="not UTF-8"):
        decode_identify(body)
    # the same fields in valid UTF-8 decode to str
    good = decode_identify(bytes([tags[field], 4]) + b"/a/b")
    assert "/a/b" in (*good.protocols, good.agent_version, good.protocol_version)


@given(st.binary(max_size=300))
def test_fuzz(data: bytes) -> None:
    try:
        decode_identify(data)
    except RemoteProtocolError:
        pass
