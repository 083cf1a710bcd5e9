from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shardroute.obs.metrics import Metrics, MetricsAdapter


def test_names_follow_conventions_and_the_adapter_records() -> None:
    metrics = Metrics(CollectorRegistry())
    adapter = MetricsAdapter(metrics)
    adapter.lookup_finished("provide", duration=0.02, requests=12, rounds=3, outcome="found")
    adapter.lookup_finished(
        "get_providers", duration=10.0, requests=40, rounds=5, outcome="timeout"
    )
    adapter.request_finished("FIND_NODE", ok=False)
    adapter.routing_table_size(17)
    adapter.peer_evicted("failures")
    families = {
        f.name: f
        for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
    }
    assert all(name.startswith("shardroute_") for name in families)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("shardroute_routing_table_peers", ())] == 17
    assert samples[("shardroute_query_timeouts_total", (("operation", "get_providers"),))] == 1
    assert (
        samples[("shardroute_lookups_total", (("operation", "provide"), ("outcome", "found")))] == 1
    )
    # known label values are there from the start, at zero; no _created series at all
    assert (
        samples[
            ("shardroute_lookups_total", (("operation", "get_value"), ("outcome", "not_found")))
        ]
        == 0
    )
    assert samples[("shardroute_bad_messages_total", (("reason", "too_large"),))] == 0
    assert not any(name.endswith("_created") for name, _ in samples)
    build = [labels for name, labels in samples if name == "shardroute_build_info"]
    assert build and dict(build[0])["version"]
    assert (
        samples[
            ("shardroute_dht_requests_sent_total", (("result", "error"), ("type", "FIND_NODE")))
        ]
        == 1
    )
    assert samples[("shardroute_routing_table_evictions_total", (("reason", "failures"),))] == 1


def test_every_metric_is_on_the_grafana_dashboard() -> None:
    """Operators watch the shipped dashboard; a metric no panel shows is one nobody sees."""
    dashboard = json.loads(
        (
            Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/shardroute.json"
        ).read_text()
    )
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    names = {f.name for f in Metrics(CollectorRegistry()).registry.collect()}
    assert names, "no metric families"
    missing = {n for n in names if not re.search(rf"\b{n}(_total|_bucket|_count|_sum)?\b", exprs)}
    assert not missing, f"not on the dashboard: {sorted(missing)}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    # every query is scoped to the dashboard's node picker, and every panel has a unit
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["instance"]
    for panel in dashboard["panels"]:
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        for target in panel["targets"]:
            assert target["legendFormat"], panel["title"]
            for name in re.findall(r"\bshardroute_\w+", target["expr"]):
                assert f'{name}{{instance=~"$instance"}}' in target["expr"], (panel["title"], name)
