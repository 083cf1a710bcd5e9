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

# Resource manager budgets (net/resources.py). Our choices for a sidecar that talks to a few
# hundred peers at most, sized so that one hostile address cannot take what others need.
MAX_CONNECTIONS = 512
MAX_INBOUND_CONNECTIONS = 384
MAX_OUTBOUND_CONNECTIONS = 384
# Of MAX_CONNECTIONS, slots only routing-table peers and our own dials may take.
RESERVED_CONNECTIONS = 64
# go-libp2p's connection limiter allows 8 per IPv4 /32; NATs put a few nodes behind one address.
MAX_CONNECTIONS_PER_IP = 16
# Sockets still negotiating security: everyone's, and one address's share of them.
MAX_INBOUND_PENDING = 64
MAX_INBOUND_PENDING_PER_IP = 8
# And one IP group's share (addrs.ip_group: an IPv4 /16, an IPv6 /32), so many addresses of one
# network cannot take every slot either: go-libp2p caps subnets as well as single addresses
# (IPv6 /56 and /48). Two addresses' shares, a quarter of MAX_INBOUND_PENDING (our choice).
MAX_INBOUND_PENDING_PER_IP_GROUP = 16
# Streams of one peer (go-libp2p's default peer scope allows 256 inbound).
MAX_INBOUND_STREAMS_PER_PEER = 256
MAX_OUTBOUND_STREAMS_PER_PEER = 256
# Inbound streams of one protocol of one peer: a DHT peer has a handful of requests in flight.
MAX_INBOUND_STREAMS_PER_PROTOCOL = 64
# Bytes received but not yet read by a handler (Yamux stream buffers), all and per peer.
MAX_BUFFER_MEMORY = 256 * MIB
MAX_BUFFER_MEMORY_PER_PEER = 16 * MIB

# Connection manager (go-libp2p connmgr defaults: 160 low, 192 high, 1 min grace).
CONNMGR_LOW_WATER = 160
CONNMGR_HIGH_WATER = 192
CONNMGR_GRACE = 60.0
# A connection without streams for this long is closed unless its peer is protected.
CONNECTION_IDLE_TIMEOUT = 300.0
# A write that makes no progress for this long ends its connection (the peer stopped reading).
WRITE_TIMEOUT = 20.0
# Stream writers wait while this much is queued for the socket (bounded output per connection).
YAMUX_OUTPUT_HIGH_WATER = 1 * MIB
# Frames queued for a peer that does not read (pongs, window updates): past this it is closed.
YAMUX_MAX_QUEUED_OUTPUT = 4 * MIB

# Kademlia core (kad-dht.md §3). k, alpha, beta: libp2p/specs kad-dht README and go-libp2p-kad-dht.
KAD_K = 20
KAD_ALPHA = 10
KAD_BETA = 3
# GET_PROVIDERS lookups ask fewer peers at once (rust-libp2p's parallelism for every lookup): a
# find usually ends at the first answer, which any of the nearest holders gives, and each extra
# request wakes one more server (our choice; bench_network A/B in docs/benchmarks.md).
KAD_PROVIDER_ALPHA = 3
# A request unanswered this long stops holding one of its lookup's alpha slots, so silent peers
# delay a lookup by this, not by the request timeout; its answer still counts if it comes
# (Kademlia paper §2.3: unresponsive nodes are set aside; our value).
KAD_STALL_TIMEOUT = 1.0
# A lookup is seeded with this many times k table peers; those beyond the k nearest are asked
# only once nearer ones fail, so a table whose k nearest are dead (churn, a restart from an old
# table) still leads to live peers instead of ending the lookup empty.
KAD_LOOKUP_SEEDS_PER_K = 4
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

# The DHT server's deadlines (go resets a stream idle for 1 min; the rest are our choices):
# a request, once begun, must arrive within KAD_READ_TIMEOUT, be handled within
# KAD_HANDLE_TIMEOUT, and its answer written within WRITE_TIMEOUT.
KAD_IDLE_TIMEOUT = 60.0
KAD_READ_TIMEOUT = 10.0
KAD_HANDLE_TIMEOUT = 30.0

# Outbound streams kept for further requests, as go's message sender keeps one per peer: at
# most this many idle per peer, each closed after KAD_STREAM_IDLE (below the 1 min after which
# go and we reset an idle inbound stream). A peer whose kept streams failed more than
# KAD_STREAM_REUSE_FAILURES times gets a fresh stream per request from then on (go: 3).
KAD_IDLE_STREAMS_PER_PEER = 2
KAD_STREAM_IDLE = 20.0
KAD_STREAM_REUSE_FAILURES = 3
KAD_SINGLE_USE_PEERS = 4096  # how many such peers are remembered
# Requests a finished lookup no longer waits for, whose answers are read in the background so
# their streams can be kept (our choice: a few lookups' worth); past this they are reset, and
# so is one whose answer is not there KAD_DRAIN_GRACE s later (a peer too slow to keep a
# stream for; answers on loopback or a LAN take milliseconds), or by its own deadline.
KAD_MAX_DRAINING = 256
KAD_DRAIN_GRACE = 2.0

# Per-peer request rates (requests/s, burst), our choice: well above what a lookup asks of one
# peer, and ADD_PROVIDER above what a republish of a large node sends one peer in a burst.
KAD_RATE_LOOKUPS = (50.0, 200.0)
KAD_RATE_PUT_VALUE = (10.0, 50.0)
KAD_RATE_ADD_PROVIDER = (2000.0, 20000.0)
KAD_RATE_PING = (10.0, 50.0)
KAD_RATE_TRACKED_PEERS = 4096

# Provider-record quotas (our choice; go has none). A provider with 250,000 shards in a network
# of 20 or more nodes gives each node at most that many; a Sybil network shares one group's.
KAD_MAX_RECORDS_PER_PEER = 250_000
KAD_MAX_RECORDS_PER_IP_GROUP = 500_000
# Providers of one key from one IP group (as the diversity filter's 3 per table).
KAD_MAX_PROVIDERS_PER_KEY_PER_GROUP = 3
# ADD_PROVIDERs already buffered on one stream taken as one batch (our choice).
KAD_PIPELINED_ADD_PROVIDERS = 1000

# Kademlia messages and records (kad-dht.md §1, §3, §7; go-libp2p-kad-dht handlers.go).
# Closer peers taken from one answer: go truncates longer lists at 2k.
KAD_MAX_CLOSER_PEERS = 2 * KAD_K
# Provider entries taken from one answer (our choice: 10x what we send, far below 4 MiB).
KAD_MAX_PROVIDER_PEERS = 200
# Addresses per Peer entry we send and keep (digest §1: "≤ ~10 addresses per peer").
KAD_MAX_ADDRS_PER_PEER = 10
# Peer entries kept decoded by their bytes, and encoded by their content: the same peers come
# and go in answer after answer (our choice: a few times a 1,000-node network's table peers;
# larger entries are coded each time, so a hostile peer can pin at most 8192 x 512 bytes).
KAD_DECODED_PEER_ENTRIES = 8192
KAD_DECODED_PEER_ENTRY_BYTES = 512
# IP groups kept by address text (addrs.ip_group), and groups by address (addrs.addr_group): our
# choice, a few times the addresses of a 1,000-node network's table peers; each entry is small.
IP_GROUP_CACHE_ENTRIES = 8192
# Provider keys are multihashes; go rejects keys longer than 80 bytes.
KAD_MAX_PROVIDER_KEY = 80
# Providers per GET_PROVIDERS answer (our choice: k, about 2 KiB, well under rust's 16 KiB).
KAD_PROVIDERS_PER_REPLY = KAD_K
# Stored values older than this are not served (go MaxRecordAge, rust record TTL: 48 h).
KAD_MAX_VALUE_AGE = 48 * 3600.0
# IPNS records: boxo ipns MaxRecordSize = 10 KiB.
IPNS_MAX_RECORD = 10 * KIB

# The process (cli/serve.py). CPython collects its youngest generation every 700 allocations;
# an async node keeps many objects alive across a few awaits (coroutines, frames, buffers), so
# at 700 the collector walks them again and again and promotes them: a quarter of a lookup's CPU
# in bench_lookups (2026-12-02). At 20,000 that share falls to about 1 %; the garbage that waits
# longer for a collection is a few MiB at most (our choice, measured).
GC_YOUNG_THRESHOLD = 20_000
