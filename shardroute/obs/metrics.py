"""Every Prometheus metric, defined once, on an injectable registry (tests pass a fresh one).

Names follow Prometheus conventions: `shardroute_` prefix, base units as suffixes, `_total`
for counters. `MetricsAdapter` is what the DHT reports through.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.routing_table_peers = Gauge(
            "shardroute_routing_table_peers", "Peers in the Kademlia routing table.", registry=r
        )
        self.lookup_duration_seconds = Histogram(
            "shardroute_lookup_duration_seconds",
            "Duration of DHT lookups by operation.",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lookups_total = Counter(
            "shardroute_lookups_total",
            "DHT lookups by operation and outcome.",
            ["operation", "outcome"],
            registry=r,
        )
        self.lookup_requests = Histogram(
            "shardroute_lookup_requests",
            "Requests sent per lookup.",
            ["operation"],
            buckets=(1, 3, 5, 10, 20, 30, 50, 100, 200),
            registry=r,
        )
        self.query_timeouts_total = Counter(
            "shardroute_query_timeouts_total",
            "Lookups that hit the query timeout.",
            ["operation"],
            registry=r,
        )
        self.dht_requests_sent_total = Counter(
            "shardroute_dht_requests_sent_total",
            "DHT requests sent by type and result.",
            ["type", "result"],
            registry=r,
        )
        self.dht_requests_received_total = Counter(
            "shardroute_dht_requests_received_total",
            "DHT requests received by type and result.",
            ["type", "result"],
            registry=r,
        )
        self.bad_messages_total = Counter(
            "shardroute_bad_messages_total",
            "Refused inbound messages by reason.",
            ["reason"],
            registry=r,
        )
        self.evictions_total = Counter(
            "shardroute_routing_table_evictions_total",
            "Peers evicted from the routing table by reason.",
            ["reason"],
            registry=r,
        )
        self.provider_records_stored = Gauge(
            "shardroute_provider_records_stored",
            "Provider records this node stores for others.",
            registry=r,
        )
        self.provider_records_announced = Gauge(
            "shardroute_provider_records_announced", "Shards this node announces.", registry=r
        )
        self.connections = Gauge(
            "shardroute_connections",
            "Open libp2p connections by direction.",
            ["direction"],
            registry=r,
        )
        self.streams = Gauge("shardroute_streams", "Open Yamux streams.", registry=r)
        self.grpc_requests_total = Counter(
            "shardroute_grpc_requests_total",
            "gRPC requests by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.store_operation_seconds = Histogram(
            "shardroute_store_operation_seconds",
            "SQLite store operation latency.",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.republish_backlog = Gauge(
            "shardroute_republish_backlog", "Announced shards due for (re)publishing.", registry=r
        )
        self.refreshes_total = Counter(
            "shardroute_routing_table_refreshes_total",
            "Routing-table refresh rounds by trigger (scheduled, adaptive, bootstrap).",
            ["trigger"],
            registry=r,
        )
        self.liveness_checks_total = Counter(
            "shardroute_liveness_checks_total",
            "Liveness probes of routing-table peers by result (alive, dead).",
            ["result"],
            registry=r,
        )
        self.bootstrap_attempts_total = Counter(
            "shardroute_bootstrap_attempts_total",
            "Bootstrap attempts by result (joined, empty).",
            ["result"],
            registry=r,
        )
        self.republished_shards_total = Counter(
            "shardroute_republished_shards_total",
            "Announced shards (re)published, by result (stored, failed).",
            ["result"],
            registry=r,
        )
        self.republish_lookups_total = Counter(
            "shardroute_republish_lookups_total",
            "Lookups spent exploring keyspace regions for republishing.",
            registry=r,
        )
        self.republish_messages_total = Counter(
            "shardroute_republish_messages_total",
            "ADD_PROVIDER messages sent by the republisher.",
            registry=r,
        )
        self.expired_records_total = Counter(
            "shardroute_expired_records_total",
            "Provider records removed from the store after their TTL.",
            registry=r,
        )
        self.peer_addrs_dropped_total = Counter(
            "shardroute_peer_addrs_dropped_total",
            "Addresses peers told us that were dropped, by reason: scope (one the peer could"
            " not have reached itself, e.g. loopback from another host) or cap (too many).",
            ["reason"],
            registry=r,
        )
        self.handshake_failures_total = Counter(
            "shardroute_handshake_failures_total",
            "Connection upgrades that failed, by reason.",
            ["reason"],
            registry=r,
        )


class MetricsAdapter:
    """The report protocols of kad and maintenance (`DhtMetrics`, `ServerMetrics`,
    `RefreshMetrics`, `BootstrapMetrics`, `ExpiryMetrics`, `RecordGauges`) on `Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def lookup_finished(
        self, op: str, *, duration: float, requests: int, rounds: int, timed_out: bool
    ) -> None:
        self.m.lookup_duration_seconds.labels(op).observe(duration)
        self.m.lookup_requests.labels(op).observe(requests)
        self.m.lookups_total.labels(op, "timeout" if timed_out else "ok").inc()
        if timed_out:
            self.m.query_timeouts_total.labels(op).inc()

    def request_finished(self, message_type: str, *, ok: bool) -> None:
        self.m.dht_requests_sent_total.labels(message_type, "ok" if ok else "error").inc()

    def routing_table_size(self, size: int) -> None:
        self.m.routing_table_peers.set(size)

    def peer_evicted(self, reason: str) -> None:
        self.m.evictions_total.labels(reason).inc()

    def peer_addrs_dropped(self, reason: str, count: int) -> None:
        self.m.peer_addrs_dropped_total.labels(reason).inc(count)

    def request_received(self, message_type: str, result: str) -> None:
        self.m.dht_requests_received_total.labels(message_type, result).inc()

    def bad_message(self, reason: str, count: int = 1) -> None:
        self.m.bad_messages_total.labels(reason).inc(count)

    def bootstrap_attempt(self, result: str) -> None:
        self.m.bootstrap_attempts_total.labels(result).inc()

    def records_expired(self, count: int) -> None:
        self.m.expired_records_total.inc(count)

    def record_counts(self, *, stored: int, announced: int, backlog: int) -> None:
        self.m.provider_records_stored.set(stored)
        self.m.provider_records_announced.set(announced)
        self.m.republish_backlog.set(backlog)

    def refresh_done(self, trigger: str) -> None:
        self.m.refreshes_total.labels(trigger).inc()

    def liveness_checked(self, alive: bool) -> None:
        self.m.liveness_checks_total.labels("alive" if alive else "dead").inc()
