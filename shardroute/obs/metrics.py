"""Every Prometheus metric, defined once, on an injectable registry (tests pass a fresh one).

Names follow Prometheus conventions: `shardroute_` prefix, base units as suffixes, `_total`
for counters. `MetricsAdapter` is what the DHT reports through.
"""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from shardroute import __version__

# `_created` series double every counter for a timestamp no dashboard reads.
disable_created_metrics()  # type: ignore[no-untyped-call]

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


# Label values known in advance: their series exist (at 0) from the start, so a rate() or an
# alert has something to read before the first event.
LOOKUP_OPERATIONS = ("provide", "get_providers", "find_node", "find_peer", "put_value", "get_value")
LOOKUP_OUTCOMES = ("found", "not_found", "timeout")
MESSAGE_TYPES = ("PUT_VALUE", "GET_VALUE", "ADD_PROVIDER", "GET_PROVIDERS", "FIND_NODE", "PING")
BAD_MESSAGE_REASONS = ("undecodable", "too_large", "rejected", "bad_peer_entry")
EVICTION_REASONS = ("unresponsive", "failures", "left_server_mode")
HANDSHAKE_FAILURE_REASONS = ("timeout", "protocol", "peer_id_mismatch", "closed")
# The budgets a refusal can name (net/resources.py, kad/fairness.py, the store).
KAD_STREAM_OUTCOMES = ("reused", "opened", "reuse_failed", "drained")
RESOURCE_REFUSALS = (
    ("system", "connections"),
    ("system", "inbound_connections"),
    ("system", "outbound_connections"),
    ("transient", "pending_upgrades"),
    ("ip", "pending_upgrades"),
    ("ip_group", "pending_upgrades"),
    ("ip", "connections"),
    ("peer", "inbound_streams"),
    ("peer", "outbound_streams"),
    ("protocol", "inbound_streams"),
    ("system", "memory"),
    ("peer", "memory"),
    ("peer", "kad_requests"),
    ("peer", "provider_records"),
    ("ip", "provider_records"),
    ("store", "writes"),
)
GRPC_METHODS = (
    "Announce",
    "Withdraw",
    "FindProviders",
    "Locate",
    "GetClosestPeers",
    "PutValue",
    "GetValue",
    "GetNodeInfo",
    "SetMode",
    "ListRoutingTable",
    "Connect",
)
# The Delegated Routing V1 HTTP API's routes (api/routing_v1.py Route) and the statuses each
# answers when nothing is wrong with the server (preflights, 401 and 429 come on top).
ROUTING_HTTP_ROUTES = {
    "providers": ("200", "400"),
    "peers": ("200", "400"),
    "ipns": ("501",),
    "closest_peers": ("501",),
    "other": ("400", "404"),
}


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.build_info = Gauge(
            "shardroute_build_info",
            "Always 1; the labels say which shardroute and Python this node runs.",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.routing_table_peers = Gauge(
            "shardroute_routing_table_peers", "Peers in the Kademlia routing table now.", registry=r
        )
        self.lookup_duration_seconds = Histogram(
            "shardroute_lookup_duration_seconds",
            "How long DHT lookups took, by operation.",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lookups_total = Counter(
            "shardroute_lookups_total",
            "DHT lookups, by operation and outcome: found (what was looked for), not_found (the"
            " lookup ended without it), timeout (the query timeout ended it with nothing).",
            ["operation", "outcome"],
            registry=r,
        )
        self.lookup_requests = Histogram(
            "shardroute_lookup_requests",
            "Requests one lookup sent, by operation.",
            ["operation"],
            buckets=(1, 3, 5, 10, 20, 30, 50, 100, 200),
            registry=r,
        )
        self.query_timeouts_total = Counter(
            "shardroute_query_timeouts_total",
            "DHT lookups that the query timeout ended with nothing found, by operation.",
            ["operation"],
            registry=r,
        )
        self.dht_requests_sent_total = Counter(
            "shardroute_dht_requests_sent_total",
            "DHT requests this node sent, by message type and result (ok: answered or written).",
            ["type", "result"],
            registry=r,
        )
        self.dht_requests_received_total = Counter(
            "shardroute_dht_requests_received_total",
            "DHT requests this node answered, by message type and result (ok, rejected, timeout: "
            "past the handle or reply-write deadline).",
            ["type", "result"],
            registry=r,
        )
        self.bad_messages_total = Counter(
            "shardroute_bad_messages_total",
            "Inbound DHT messages refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.evictions_total = Counter(
            "shardroute_routing_table_evictions_total",
            "Peers evicted from the routing table, by reason.",
            ["reason"],
            registry=r,
        )
        self.provider_records_stored = Gauge(
            "shardroute_provider_records_stored",
            "Unexpired provider records this node keeps for other providers (and itself).",
            registry=r,
        )
        self.provider_records_announced = Gauge(
            "shardroute_provider_records_announced", "Shards this node announces.", registry=r
        )
        self.provider_records_published_total = Counter(
            "shardroute_provider_records_published_total",
            "Provider records this node handed to peers (ADD_PROVIDER written), all publishing"
            " paths together: one per shard and peer.",
            registry=r,
        )
        self.connections = Gauge(
            "shardroute_connections",
            "Open libp2p connections, by direction.",
            ["direction"],
            registry=r,
        )
        self.streams = Gauge(
            "shardroute_streams", "Open Yamux streams, on all connections.", registry=r
        )
        self.grpc_requests_total = Counter(
            "shardroute_grpc_requests_total",
            "gRPC API calls answered, by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.grpc_request_duration_seconds = Histogram(
            "shardroute_grpc_request_duration_seconds",
            "How long gRPC API calls took until their status, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.routing_http_requests_total = Counter(
            "shardroute_routing_http_requests_total",
            "Delegated Routing V1 HTTP requests answered, by route and HTTP status (a stream"
            " counts when it ends).",
            ["route", "status"],
            registry=r,
        )
        self.routing_http_request_duration_seconds = Histogram(
            "shardroute_routing_http_request_duration_seconds",
            "How long Delegated Routing V1 HTTP requests took until their answer ended, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_operation_seconds = Histogram(
            "shardroute_store_operation_seconds",
            "How long SQLite store operations took, by repository and operation.",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.republish_backlog = Gauge(
            "shardroute_republish_backlog",
            "Announced shards due for (re)publishing now.",
            registry=r,
        )
        self.refreshes_total = Counter(
            "shardroute_routing_table_refreshes_total",
            "Routing-table refresh rounds, by trigger (scheduled, adaptive, bootstrap).",
            ["trigger"],
            registry=r,
        )
        self.liveness_checks_total = Counter(
            "shardroute_liveness_checks_total",
            "Liveness probes of routing-table peers, by result (alive, dead).",
            ["result"],
            registry=r,
        )
        self.bootstrap_attempts_total = Counter(
            "shardroute_bootstrap_attempts_total",
            "Bootstrap attempts, by result (joined, empty: no peer reached).",
            ["result"],
            registry=r,
        )
        self.republished_shards_total = Counter(
            "shardroute_republished_shards_total",
            "Announced shards (re)published, by result (stored: at least one peer took it;"
            " failed: none did, retried soon).",
            ["result"],
            registry=r,
        )
        self.republish_lookups_total = Counter(
            "shardroute_republish_lookups_total",
            "Lookups the publisher spent finding each keyspace region's closest peers.",
            registry=r,
        )
        self.republish_messages_total = Counter(
            "shardroute_republish_messages_total",
            "ADD_PROVIDER messages the publisher handed to the network.",
            registry=r,
        )
        self.expired_records_total = Counter(
            "shardroute_expired_records_total",
            "Provider records deleted from the store after their TTL.",
            registry=r,
        )
        self.peer_addrs_dropped_total = Counter(
            "shardroute_peer_addrs_dropped_total",
            "Addresses peers told us that were dropped, by reason: scope (one the peer could"
            " not have reached itself, e.g. loopback from another host) or cap (too many).",
            ["reason"],
            registry=r,
        )
        self.kad_streams_total = Counter(
            "shardroute_kad_streams_total",
            "Outbound DHT requests by the stream they went on: reused (kept from an earlier"
            " request), opened (a new stream), reuse_failed (a kept stream was broken or out of"
            " step, so the request went again on a new one); drained: the caller stopped waiting"
            " (its lookup had the answer), the reply was read in the background and the stream"
            " kept.",
            ["outcome"],
            registry=r,
        )
        self.resource_refusals_total = Counter(
            "shardroute_resource_refusals_total",
            "Work refused because a budget was spent (connections, streams, memory, requests,"
            " records, store writes), by the budget's scope and resource.",
            ["scope", "resource"],
            registry=r,
        )
        self.handshake_failures_total = Counter(
            "shardroute_handshake_failures_total",
            "Connection upgrades (multistream, Noise, Yamux) that failed, inbound and outbound,"
            " by reason.",
            ["reason"],
            registry=r,
        )
        self._initialise_labels()

    def _initialise_labels(self) -> None:
        for op in LOOKUP_OPERATIONS:
            self.lookup_duration_seconds.labels(op)
            self.lookup_requests.labels(op)
            self.query_timeouts_total.labels(op)
            for outcome in LOOKUP_OUTCOMES:
                self.lookups_total.labels(op, outcome)
        for kind in MESSAGE_TYPES:
            for result in ("ok", "error"):
                self.dht_requests_sent_total.labels(kind, result)
            for result in ("ok", "rejected", "timeout"):
                self.dht_requests_received_total.labels(kind, result)
        for method in GRPC_METHODS:
            self.grpc_requests_total.labels(method, "OK")
            self.grpc_request_duration_seconds.labels(method)
        for scope, resource in RESOURCE_REFUSALS:
            self.resource_refusals_total.labels(scope, resource)
        for route, statuses in ROUTING_HTTP_ROUTES.items():
            self.routing_http_request_duration_seconds.labels(route)
            for status in statuses:
                self.routing_http_requests_total.labels(route, status)
        for counter, values in (
            (self.bad_messages_total, BAD_MESSAGE_REASONS),
            (self.evictions_total, EVICTION_REASONS),
            (self.handshake_failures_total, HANDSHAKE_FAILURE_REASONS),
            (self.peer_addrs_dropped_total, ("scope", "cap")),
            (self.kad_streams_total, KAD_STREAM_OUTCOMES),
            (self.refreshes_total, ("scheduled", "adaptive", "bootstrap")),
            (self.liveness_checks_total, ("alive", "dead")),
            (self.bootstrap_attempts_total, ("joined", "empty")),
            (self.republished_shards_total, ("stored", "failed")),
        ):
            for value in values:
                counter.labels(value)


class MetricsAdapter:
    """The report protocols of kad and maintenance (`DhtMetrics`, `ServerMetrics`,
    `RefreshMetrics`, `BootstrapMetrics`, `ExpiryMetrics`, `RecordGauges`) on `Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def lookup_finished(
        self, op: str, *, duration: float, requests: int, rounds: int, outcome: str
    ) -> None:
        self.m.lookup_duration_seconds.labels(op).observe(duration)
        self.m.lookup_requests.labels(op).observe(requests)
        self.m.lookups_total.labels(op, outcome).inc()
        if outcome == "timeout":
            self.m.query_timeouts_total.labels(op).inc()

    def request_finished(self, message_type: str, *, ok: bool) -> None:
        self.m.dht_requests_sent_total.labels(message_type, "ok" if ok else "error").inc()

    def routing_table_size(self, size: int) -> None:
        self.m.routing_table_peers.set(size)

    def peer_evicted(self, reason: str) -> None:
        self.m.evictions_total.labels(reason).inc()

    def handshake_failed(self, reason: str) -> None:
        self.m.handshake_failures_total.labels(reason).inc()

    def resource_refused(self, scope: str, resource: str) -> None:
        self.m.resource_refusals_total.labels(scope, resource).inc()

    def records_published(self, count: int) -> None:
        self.m.provider_records_published_total.inc(count)

    def peer_addrs_dropped(self, reason: str, count: int) -> None:
        self.m.peer_addrs_dropped_total.labels(reason).inc(count)

    def kad_stream_used(self, outcome: str) -> None:
        self.m.kad_streams_total.labels(outcome).inc()

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
