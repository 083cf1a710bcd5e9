"""Fuzz harnesses for the multiformats: CIDs, multiaddrs, peer IDs and public keys."""

from __future__ import annotations

import struct
from collections.abc import Callable

from bench.fuzz_fixtures import ID_R, PEER_I, PEER_R, _fail, _layout, _other_identities, _seed
from shardroute.addrs import (
    addr_text,
    ip_group,
    ip_of,
    multiaddr_from_bytes,
    multiaddr_to_bytes,
    parse_multiaddr,
    sanitize_peer_addrs,
    split_p2p,
    tcp_endpoint,
)
from shardroute.content import ContentId
from shardroute.errors import InvalidCid, InvalidKey, InvalidPeerId
from shardroute.identity.keys import PublicKey
from shardroute.identity.peer_id import PeerId


# ------------------------------------------------------------------------------ CIDs
def fuzz_cid(data: bytes) -> None:
    mode, _, body = _layout(data)
    try:
        if mode % 3 == 0:
            cid = ContentId.from_bytes(body)
        elif mode % 3 == 1:
            cid = ContentId.parse(body.decode("utf-8", "replace"))
        else:
            cid = ContentId.parse_cid_or_hash(body.decode("utf-8", "replace"))
    except InvalidCid:
        return
    if ContentId.from_bytes(cid.to_bytes()) != cid:
        _fail("CID does not survive bytes")
    if ContentId.parse(str(cid)) != cid:
        _fail("CID does not survive text")
    v1 = cid.to_v1()
    if ContentId.parse(str(v1)) != v1:
        _fail("CIDv1 form does not survive text")
    if cid.shard_hash is not None and len(cid.shard_hash) != 32:
        _fail("shard hash is not 32 bytes")


def seeds_cid() -> list[bytes]:
    cids = [
        ContentId.from_shard_hash(bytes(range(32))),
        ContentId(1, 0x70, b"\x12\x20" + bytes(32)),
        ContentId(0, 0x70, b"\x12\x20" + bytes(range(32))),
        ContentId(1, 0x0129, b"\x12\x20" + bytes(32)),
        ContentId(1, 0x55, b"\x00\x03abc"),
    ]
    out = [_seed(0, 0, c.to_bytes()) for c in cids]
    out += [_seed(1, 0, str(c).encode()) for c in cids]
    out.append(_seed(2, 0, bytes(range(32)).hex().encode()))
    out.append(_seed(1, 0, b"zb2rhe5P4gXftAwvA4eXQ5HJwsER2owDyS9sKaQRRVQPn93bA"))
    return out


# ------------------------------------------------------------------------------ multiaddrs
def fuzz_multiaddr(data: bytes) -> None:
    mode, _, body = _layout(data)
    try:
        if mode & 1:
            addr = parse_multiaddr(body.decode("utf-8", "replace"))
        else:
            addr = multiaddr_from_bytes(body)
    except ValueError:
        return
    raw = multiaddr_to_bytes(addr)
    if raw and len(raw) <= 1024 and multiaddr_from_bytes(raw) != addr:
        _fail("multiaddr does not survive bytes")
    if parse_multiaddr(addr_text(addr)) != addr:
        _fail("multiaddr does not survive text")
    try:
        split_p2p(addr)
    except ValueError:
        pass
    tcp_endpoint(addr)
    ip = ip_of(addr)
    if ip is not None:
        ip_group(str(ip))
        ip_group(str(ip), exempt_private=False)
    if raw:
        sanitize_peer_addrs(PEER_R, [raw])


def seeds_multiaddr() -> list[bytes]:
    texts = [
        "/ip4/1.2.3.4/tcp/4001",
        f"/ip4/1.2.3.4/tcp/4001/p2p/{PEER_R}",
        f"/ip6/2001:db8::1/tcp/4001/p2p/{PEER_R.to_cid()}",
        "/dns4/example.com/tcp/443/wss",
        "/ip4/127.0.0.1/udp/4001/quic-v1",
        f"/ip4/1.2.3.4/tcp/1/p2p/{PEER_I}/p2p-circuit/p2p/{PEER_R}",
        "/ip6zone/eth0/ip6/fe80::1/tcp/1",
        "/unix/tmp%2Fsock",
    ]
    out = []
    for text in texts:
        try:
            addr = parse_multiaddr(text)
        except ValueError:
            continue
        out += [_seed(0, 0, addr.to_bytes()), _seed(1, 0, text.encode())]
    return out


# ------------------------------------------------------------------------------ peer IDs and keys
def fuzz_peer_id(data: bytes) -> None:
    mode, _, body = _layout(data)
    if mode % 3 == 2:  # a public key protobuf, a signature and a message
        _fuzz_public_key(body)
        return
    try:
        if mode % 3 == 0:
            peer = PeerId.from_bytes(body)
        else:
            peer = PeerId.parse(body.decode("utf-8", "replace"))
    except InvalidPeerId:
        return
    if PeerId.parse(str(peer)) != peer or PeerId.parse(peer.to_cid()) != peer:
        _fail("peer ID does not survive its text forms")
    peer.extract_public_key()


def _fuzz_public_key(body: bytes) -> None:
    if len(body) < 4:
        return
    key_len = struct.unpack(">H", body[:2])[0]
    key_pb = body[2 : 2 + key_len]
    rest = body[2 + key_len :]
    sig_len = struct.unpack(">H", rest[:2])[0] if len(rest) >= 2 else 0
    signature, message = rest[2 : 2 + sig_len], rest[2 + sig_len :]
    try:
        key = PublicKey.from_protobuf(key_pb)
    except InvalidKey:
        return
    if PublicKey.from_protobuf(key.to_protobuf()) != key:
        _fail("public key does not survive its protobuf")
    if type(key.verify(message, signature)) is not bool:
        _fail("verify answered something other than a bool")
    peer = PeerId.from_public_key(key)
    if PeerId.from_bytes(peer.raw) != peer or not peer.matches_public_key(key):
        _fail("peer ID of a key is not a valid peer ID of that key")


def seeds_peer_id() -> list[bytes]:
    out = []
    for peer in (PEER_I, PEER_R, PeerId(b"\x12\x20" + bytes(32))):
        out += [_seed(0, 0, peer.raw), _seed(1, 0, str(peer).encode())]
        out.append(_seed(1, 0, peer.to_cid().encode()))
    message = b"a message to sign"
    signers: list[tuple[bytes, Callable[[bytes], bytes]]] = [
        (ID_R.public_key.to_protobuf(), ID_R.sign),
        *_other_identities(),
    ]
    for key_pb, sign in signers:
        signature = sign(message)
        body = struct.pack(">H", len(key_pb)) + key_pb + struct.pack(">H", len(signature))
        out.append(_seed(2, 0, body + signature + message))
    return out
