"""How addresses are kept in a column: uvarint-framed binary multiaddrs, one after another."""

from __future__ import annotations

from collections.abc import Iterable

from multiaddr import Multiaddr

from shardroute.addrs import multiaddr_from_bytes, multiaddr_to_bytes
from shardroute.protocol.varint import LengthPrefixedReader, frame


def pack_addrs(addrs: Iterable[Multiaddr]) -> bytes:
    return b"".join(frame(multiaddr_to_bytes(a)) for a in addrs)


def unpack_addrs(blob: bytes) -> tuple[Multiaddr, ...]:
    reader = LengthPrefixedReader(1024)
    reader.receive_data(blob)
    out = []
    while (raw := reader.next_message()) is not None:
        try:
            out.append(multiaddr_from_bytes(raw))
        except ValueError:
            continue
    return tuple(out)
