"""The error tree.

Local errors are our own misuse of an API; remote errors mean a peer broke a protocol. Each
layer subclasses one of the two so drivers can decide what to close: a RemoteProtocolError
ends the stream or connection it arrived on and nothing else.
"""

from __future__ import annotations


class ShardrouteError(Exception):
    """Root of every error shardroute raises on purpose."""


class LocalProtocolError(ShardrouteError):
    """We asked a protocol state machine for something its state does not allow."""


class RemoteProtocolError(ShardrouteError):
    """The peer sent bytes that break the protocol."""


class MessageTooLarge(RemoteProtocolError):
    """A length prefix announced more bytes than the limit for that message allows."""


class VarintError(RemoteProtocolError):
    """An unsigned varint was over-long, non-minimal or truncated where it must be whole."""


class MultistreamError(RemoteProtocolError):
    """multistream-select negotiation failed or the peer broke its framing."""


class ProtocolNotSupported(MultistreamError):
    """The peer answered `na` to every protocol we proposed."""


class NoiseError(RemoteProtocolError):
    """The Noise handshake or a transport frame failed (bad frame, MAC, signature, key)."""


class PeerIdMismatch(NoiseError):
    """The peer authenticated as a different peer ID from the one we dialed."""


class YamuxError(RemoteProtocolError):
    """The peer broke the Yamux framing or flow-control rules.

    `code` is the GoAway code we send before closing (0 normal, 1 protocol, 2 internal).
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class StreamReset(ShardrouteError):
    """The stream was reset (by the peer or by us); no more data moves on it."""


class ConnectionClosed(ShardrouteError):
    """The connection is gone; streams on it can no longer be used."""


class StartupError(ShardrouteError):
    """The node cannot start as configured (a port in use, a locked data folder); nothing ran."""


class ListenError(StartupError):
    """A listener could not bind its address."""


class DialError(ShardrouteError):
    """A dial to a peer failed: no usable address, refused, timed out or handshake failed."""


class DialPeerMismatch(DialError):
    """The dialed address answered with another peer ID than the one we meant to reach."""


class ResourceLimitExceeded(ShardrouteError):
    """A configured cap (connections, streams, buffers) would be exceeded."""


class InvalidKey(ShardrouteError):
    """A public or private key could not be parsed, or has an unsupported type or size."""


class InvalidPeerId(ShardrouteError):
    """Bytes or text that do not form a valid peer ID."""


class InvalidCid(ShardrouteError):
    """Text or bytes that do not form a valid CID or shard hash."""


class StoreError(ShardrouteError):
    """The database cannot be opened or migrated: not SQLite, or from a newer shardroute."""


class StoreFull(StoreError):
    """The disk holding the database is full: nothing more can be written until space returns."""


class StoreUnavailable(StoreError):
    """The database cannot be written (a read-only file or file system, an I/O error)."""


class InvalidRecord(ShardrouteError):
    """A DHT record failed validation for its namespace."""


class KadRequestFailed(ShardrouteError):
    """A DHT request to a peer failed: dial error, reset, timeout, or an unusable reply."""


class KadMessageError(RemoteProtocolError):
    """A DHT message that does not decode, or has an unknown type."""


class RequestRefused(ShardrouteError):
    """A peer's request is over one of its budgets (a rate, a quota): refused, counted."""


class KadRequestRejected(ShardrouteError):
    """A DHT request we refuse as go does: the stream is reset, nothing is answered or stored."""
