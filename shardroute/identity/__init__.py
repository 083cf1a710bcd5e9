"""Keys and peer IDs."""

from shardroute.identity.keys import Ed25519PrivateKey, KeyType, PublicKey
from shardroute.identity.peer_id import PeerId

__all__ = ["Ed25519PrivateKey", "KeyType", "PeerId", "PublicKey"]
