"""Every byte, count and time budget, with where its value comes from.

Parsers check these before allocating. Values that other implementations enforce on us are
quoted from their sources; the rest are our own choices, sized for a storage-node sidecar.
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB

# Unsigned varints: at most 9 bytes / 63 bits (multiformats unsigned-varint spec).
VARINT_MAX_BYTES = 9

# multistream-select: go-multistream rejects messages over 1024 bytes (ErrTooLarge).
MULTISTREAM_MAX_MESSAGE = 1024
# How many proposals a responder answers before giving up on a peer (our choice).
MULTISTREAM_MAX_PROPOSALS = 16

# Noise: frames carry a u16 length, so 65535 bytes including the 16-byte tag (noise spec).
NOISE_MAX_FRAME = 65535
NOISE_TAG_LEN = 16
NOISE_MAX_PLAINTEXT = NOISE_MAX_FRAME - NOISE_TAG_LEN
# A handshake payload is a key, a signature and extensions; RSA-8192 keys are the largest.
NOISE_MAX_HANDSHAKE_PAYLOAD = 8 * KIB

# Yamux (hashicorp spec, go-yamux const.go).
YAMUX_HEADER_LEN = 12
YAMUX_INITIAL_WINDOW = 256 * KIB
YAMUX_MAX_WINDOW = 16 * MIB
# go-yamux caps a data frame at 64 KiB; we cap the payload we send per frame the same way.
YAMUX_MAX_FRAME_PAYLOAD = 64 * KIB
# Streams we opened that the peer has not ACKed yet (yamux spec "ACK backlog").
YAMUX_MAX_ACK_BACKLOG = 256
# Concurrent streams per connection, inbound and outbound together (our choice).
YAMUX_MAX_STREAMS = 1024
# go pings every 30 s and drops the session after 10 s without an answer.
YAMUX_KEEPALIVE_INTERVAL = 30.0
YAMUX_PING_TIMEOUT = 10.0

# Identify: go accepts up to 8 KiB per message (identify.go signedIDSize/maxMessages).
IDENTIFY_MAX_MESSAGE = 8 * KIB
IDENTIFY_MAX_MESSAGES = 10
IDENTIFY_TIMEOUT = 5.0

# Ping: 32-byte payload, 10 s per ping (go-libp2p ping.go).
PING_PAYLOAD_LEN = 32
PING_TIMEOUT = 10.0

# Kademlia RPC messages: go-libp2p network.MessageSizeMax = 4 MiB.
KAD_MAX_MESSAGE = 4 * MIB
# rust-libp2p's default kad packet limit; replies stay under it unless the peer takes more.
KAD_PORTABLE_MESSAGE = 16 * KIB

# Connection set-up (go-libp2p: 15 s accept timeout, 10 s stream negotiation).
DIAL_TIMEOUT = 15.0
UPGRADE_TIMEOUT = 15.0
STREAM_NEGOTIATION_TIMEOUT = 10.0

# Host-wide caps (our choice for a sidecar: a few hundred peers at most).
MAX_CONNECTIONS = 512
MAX_INBOUND_PENDING = 64

# Kademlia core (kad-dht.md §3). k, alpha, beta: libp2p/specs kad-dht README and go-libp2p-kad-dht.
KAD_K = 20
KAD_ALPHA = 10
KAD_BETA = 3
# Refresh keys are found by hashing random pre-images; go's prefix table stops at cpl 15.
KAD_REFRESH_MAX_CPL = 15
# Per-bucket replacement cache and failures before eviction (our choice; Kademlia paper §4.1).
KAD_REPLACEMENT_CACHE = 8
KAD_MAX_FAILURES = 3
# IP diversity in the routing table (go-libp2p-kad-dht: 2 per cpl, 3 per table per IP group).
KAD_DIVERSITY_PER_BUCKET = 2
KAD_DIVERSITY_PER_TABLE = 3

# PUT_VALUE / ADD_PROVIDER to one peer (go-libp2p-kad-dht: 30 s for a put to one peer).
KAD_PUT_TIMEOUT = 30.0

# Kademlia messages and records (kad-dht.md §1, §3, §7; go-libp2p-kad-dht handlers.go).
# Closer peers taken from one answer: go truncates longer lists at 2k.
KAD_MAX_CLOSER_PEERS = 2 * KAD_K
# Provider entries taken from one answer (our choice: 10x what we send, far below 4 MiB).
KAD_MAX_PROVIDER_PEERS = 200
# Addresses per Peer entry we send and keep (digest §1: "≤ ~10 addresses per peer").
KAD_MAX_ADDRS_PER_PEER = 10
# Provider keys are multihashes; go rejects keys longer than 80 bytes.
KAD_MAX_PROVIDER_KEY = 80
# Providers per GET_PROVIDERS answer (our choice: k, about 2 KiB, well under rust's 16 KiB).
KAD_PROVIDERS_PER_REPLY = KAD_K
# Stored values older than this are not served (go MaxRecordAge, rust record TTL: 48 h).
KAD_MAX_VALUE_AGE = 48 * 3600.0
# IPNS records: boxo ipns MaxRecordSize = 10 KiB.
IPNS_MAX_RECORD = 10 * KIB
