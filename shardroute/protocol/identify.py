"""Identify and Identify Push messages (libp2p/specs identify): codec and merge rules."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from shardroute.errors import RemoteProtocolError
from shardroute.pb import identify_pb2
from shardroute.protocol.protobuf import parse_message

IDENTIFY_PROTOCOL = "/ipfs/id/1.0.0"
IDENTIFY_PUSH_PROTOCOL = "/ipfs/id/push/1.0.0"
PROTOCOL_VERSION = "ipfs/0.1.0"


class IdentifyError(RemoteProtocolError):
    """An identify message that does not decode or does not match the connection's peer."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentifyInfo:
    """What one identify message says. Addresses are binary multiaddrs, as on the wire."""

    public_key: bytes | None = None
    listen_addrs: tuple[bytes, ...] = ()
    observed_addr: bytes | None = None
    protocols: tuple[str, ...] = ()
    agent_version: str | None = None
    protocol_version: str | None = None
    signed_peer_record: bytes | None = None
    # Which fields the message carried: a push that omits a field leaves it unchanged.
    present: frozenset[str] = field(default_factory=frozenset)

    def merged_over(self, older: IdentifyInfo) -> IdentifyInfo:
        """This message applied on top of what we knew (missing fields keep older values)."""
        changes = {name: getattr(self, name) for name in self.present}
        return replace(older, present=older.present | self.present, **changes)


def encode_identify(info: IdentifyInfo) -> bytes:
    msg = identify_pb2.Identify()
    if info.protocol_version is not None:
        msg.protocolVersion = info.protocol_version
    if info.agent_version is not None:
        msg.agentVersion = info.agent_version
    if info.public_key is not None:
        msg.publicKey = info.public_key
    msg.listenAddrs.extend(info.listen_addrs)
    if info.observed_addr is not None:
        msg.observedAddr = info.observed_addr
    msg.protocols.extend(info.protocols)
    if info.signed_peer_record is not None:
        msg.signedPeerRecord = info.signed_peer_record
    return msg.SerializeToString()


def decode_identify(body: bytes) -> IdentifyInfo:
    msg = parse_message(identify_pb2.Identify, body, IdentifyError, "identify message")
    # proto2 strings are not checked on parse: python-protobuf hands back bytes for invalid
    # UTF-8. Refuse the message, as rust-libp2p (prost) does, so callers only see str.
    texts = [*msg.protocols, msg.agentVersion, msg.protocolVersion]
    if not all(isinstance(t, str) for t in texts):
        raise IdentifyError("identify message has a string field that is not UTF-8")
    present: set[str] = set()
    if msg.HasField("publicKey"):
        present.add("public_key")
    if msg.listenAddrs:
        present.add("listen_addrs")
    if msg.HasField("observedAddr"):
        present.add("observed_addr")
    if msg.protocols:
        present.add("protocols")
    if msg.HasField("agentVersion"):
        present.add("agent_version")
    if msg.HasField("protocolVersion"):
        present.add("protocol_version")
    if msg.HasField("signedPeerRecord"):
        present.add("signed_peer_record")
    return IdentifyInfo(
        public_key=msg.publicKey if msg.HasField("publicKey") else None,
        listen_addrs=tuple(msg.listenAddrs),
        observed_addr=msg.observedAddr if msg.HasField("observedAddr") else None,
        protocols=tuple(msg.protocols),
        agent_version=msg.agentVersion if msg.HasField("agentVersion") else None,
        protocol_version=msg.protocolVersion if msg.HasField("protocolVersion") else None,
        signed_peer_record=msg.signedPeerRecord if msg.HasField("signedPeerRecord") else None,
        present=frozenset(present),
    )
