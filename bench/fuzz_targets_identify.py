"""Fuzz harness for identify: its messages and what the host takes from them."""

from __future__ import annotations

from bench.fuzz_fixtures import ID_R, PEER_R, _chunks, _fail, _layout, _seed
from shardroute.addrs import (
    multiaddr_from_bytes,
    multiaddr_to_bytes,
    parse_multiaddr,
    sanitize_peer_addrs,
)
from shardroute.errors import InvalidKey, MessageTooLarge, VarintError
from shardroute.identity.keys import PublicKey
from shardroute.limits import IDENTIFY_MAX_MESSAGE
from shardroute.protocol.identify import (
    IdentifyError,
    IdentifyInfo,
    decode_identify,
    encode_identify,
)
from shardroute.protocol.varint import LengthPrefixedReader, frame

# ------------------------------------------------------------------------------ identify
FULL_INFO = IdentifyInfo(
    public_key=ID_R.public_key.to_protobuf(),
    listen_addrs=(parse_multiaddr("/ip4/1.2.3.4/tcp/4001").to_bytes(),),
    observed_addr=parse_multiaddr("/ip4/5.6.7.8/tcp/55555").to_bytes(),
    protocols=("/ipfs/kad/1.0.0", "/ipfs/id/1.0.0"),
    agent_version="go-ipfs/0.30",
    protocol_version="ipfs/0.1.0",
    signed_peer_record=b"\x0a\x00",
    present=frozenset(
        {
            "public_key",
            "listen_addrs",
            "observed_addr",
            "protocols",
            "agent_version",
            "protocol_version",
            "signed_peer_record",
        }
    ),
)


def _apply_identify(info: IdentifyInfo) -> None:
    """What net/identify.py does with a message, minus the peerstore."""
    if info.public_key is not None:
        try:
            key = PublicKey.from_protobuf(info.public_key)
        except InvalidKey:
            pass
        else:
            PEER_R.matches_public_key(key)
    for addr in sanitize_peer_addrs(PEER_R, info.listen_addrs):
        multiaddr_to_bytes(addr)
    if info.observed_addr is not None:
        try:
            multiaddr_from_bytes(info.observed_addr)
        except ValueError:
            pass


def fuzz_identify(data: bytes) -> None:
    mode, size, body = _layout(data)
    if mode & 1:  # one stream of framed messages, merged as the host reads them
        reader = LengthPrefixedReader(IDENTIFY_MAX_MESSAGE)
        merged = IdentifyInfo()
        try:
            for chunk in _chunks(body, size):
                reader.receive_data(chunk)
                while (message := reader.next_message()) is not None:
                    merged = decode_identify(message).merged_over(merged)
        except (IdentifyError, VarintError, MessageTooLarge):
            return
        _apply_identify(merged)
        return
    try:
        info = decode_identify(body)
    except IdentifyError:
        return
    if decode_identify(encode_identify(info)) != info:
        _fail("identify message does not survive a re-encode")
    merged = info.merged_over(FULL_INFO)
    if merged.present != FULL_INFO.present | info.present:
        _fail("merge lost a field")
    _apply_identify(info)
    _apply_identify(merged)


def seeds_identify() -> list[bytes]:
    full = encode_identify(FULL_INFO)
    push = encode_identify(
        IdentifyInfo(protocols=("/ipfs/ping/1.0.0",), present=frozenset({"protocols"}))
    )
    return [
        _seed(0, 0, full),
        _seed(0, 0, push),
        _seed(1, 0, frame(full) + frame(push)),
        _seed(1, 13, frame(full) + frame(push)),
    ]
