"""The identify service: tell peers who we are, learn who they are, push changes."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from shardroute import limits
from shardroute.addrs import multiaddr_from_bytes, multiaddr_to_bytes, sanitize_peer_addrs
from shardroute.errors import InvalidKey, MessageTooLarge, RemoteProtocolError
from shardroute.identity.keys import PublicKey
from shardroute.net.muxer import MuxedStream
from shardroute.protocol.identify import (
    PROTOCOL_VERSION,
    IdentifyError,
    IdentifyInfo,
    decode_identify,
    encode_identify,
)
from shardroute.protocol.varint import LengthPrefixedReader, frame

if TYPE_CHECKING:
    from shardroute.net.host import Host

log = logging.getLogger(__name__)


def our_identify(host: Host, stream: MuxedStream) -> IdentifyInfo:
    observed = multiaddr_to_bytes(stream.conn.remote_addr)
    return IdentifyInfo(
        public_key=host.identity.public_key.to_protobuf(),
        listen_addrs=tuple(multiaddr_to_bytes(a) for a in host.advertised_addrs()),
        observed_addr=observed,
        protocols=tuple(host.protocols()),
        agent_version=host.agent_version,
        protocol_version=PROTOCOL_VERSION,
        present=frozenset(
            {
                "public_key",
                "listen_addrs",
                "observed_addr",
                "protocols",
                "agent_version",
                "protocol_version",
            }
        ),
    )


async def send_identify(host: Host, stream: MuxedStream) -> None:
    """Answer `/ipfs/id/1.0.0` (or push): one message, then FIN so the reader sees EOF."""
    await stream.send(frame(encode_identify(our_identify(host, stream))))
    await stream.aclose()


async def read_identify(stream: MuxedStream) -> IdentifyInfo:
    """Read messages until EOF and merge them, as go does (at most 10, 8 KiB each)."""
    reader = LengthPrefixedReader(limits.IDENTIFY_MAX_MESSAGE)
    merged = IdentifyInfo()
    count = 0
    with anyio.fail_after(limits.IDENTIFY_TIMEOUT):
        while True:
            try:
                reader.receive_data(await stream.receive())
            except anyio.EndOfStream:
                if reader.buffered:
                    raise IdentifyError("identify stream ended inside a message") from None
                break
            while (body := reader.next_message()) is not None:
                count += 1
                if count > limits.IDENTIFY_MAX_MESSAGES:
                    raise MessageTooLarge("more than 10 identify messages")
                merged = decode_identify(body).merged_over(merged)
    await stream.aclose()
    return merged


def apply_identify(host: Host, stream: MuxedStream, info: IdentifyInfo) -> None:
    """Store what the peer told us; refuse a message whose key is not the connection's peer."""
    peer = stream.remote_peer
    if info.public_key is not None:
        try:
            key = PublicKey.from_protobuf(info.public_key)
        except InvalidKey as exc:
            raise IdentifyError(f"identify carries an unusable public key: {exc}") from exc
        if not peer.matches_public_key(key):
            raise IdentifyError("identify public key does not match the connection's peer")
        host.peerstore.set_public_key(peer, key)
    now = host.clock.monotonic()
    if "listen_addrs" in info.present:
        addrs = sanitize_peer_addrs(peer, info.listen_addrs)
        host.peerstore.add_addrs(peer, addrs, host.connected_addr_ttl, now)
    if "protocols" in info.present:
        host.peerstore.set_protocols(peer, info.protocols)
    if "agent_version" in info.present or "protocol_version" in info.present:
        host.peerstore.set_agent(peer, info.agent_version, info.protocol_version)
    if info.observed_addr is not None:
        try:
            host.note_observed_addr(multiaddr_from_bytes(info.observed_addr))
        except ValueError:
            pass


async def identify_peer(host: Host, stream: MuxedStream) -> IdentifyInfo:
    info = await read_identify(stream)
    apply_identify(host, stream, info)
    return info


async def handle_push(host: Host, stream: MuxedStream) -> None:
    try:
        info = await read_identify(stream)
        apply_identify(host, stream, info)
    except (RemoteProtocolError, TimeoutError) as exc:
        log.info("ignoring identify push from %s: %s", stream.remote_peer, exc)
        await stream.reset()
        return
    host.notify_identified(stream.remote_peer, info, pushed=True)
