"""Noise XX for libp2p, sans-IO."""

from shardroute.protocol.events import NeedData
from shardroute.protocol.noise.handshake import HandshakeCompleted, NoiseHandshake
from shardroute.protocol.noise.transport import NoiseTransport

__all__ = ["HandshakeCompleted", "NeedData", "NoiseHandshake", "NoiseTransport"]
