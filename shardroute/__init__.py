"""shardroute: content routing for erasure-coded shards over a libp2p Kademlia DHT."""

__version__ = "0.1.0"
