"""Bootstrap and refresh with real nodes on 127.0.0.1 and virtual time."""

from __future__ import annotations

import pytest

from tests.support.fleet import fleet, grow

pytestmark = [pytest.mark.anyio, pytest.mark.network]


def sample(member: object, name: str, labels: dict[str, str] | None = None) -> float:
    registry = member.app.metrics.registry  # type: ignore[attr-defined]
    return registry.get_sample_value(name, labels or {}) or 0.0


async def test_a_new_node_with_three_bootstrap_peers_fills_its_table() -> None:
    async with fleet() as crew:
        await grow(crew, 49)
        await crew.settle()
        newcomer = await crew.add([m.addr for m in crew.members[:3]])
        # join() returned: bootstrap dials, the self-lookup and the bucket lookups are done.
        assert len(newcomer.app.dht.routing_table) > 10
        assert sample(newcomer, "shardroute_bootstrap_attempts_total", {"result": "joined"}) == 1
        assert (
            sample(newcomer, "shardroute_routing_table_refreshes_total", {"trigger": "bootstrap"})
            == 1
        )


async def test_refresh_evicts_the_dead_and_keeps_the_table_full() -> None:
    async with fleet() as crew:
        await grow(crew, 50)
        await crew.run_for(301)  # one refresh round for everyone, so tables settle
        survivors, doomed = crew.members[:40], crew.members[40:]
        before = {m.app.peer_id: len(m.app.dht.routing_table) for m in survivors}
        for member in doomed:
            await crew.kill(member)
        dead = {m.app.peer_id for m in doomed}
        killed_at = crew.fake_clock.monotonic()
        # Until every survivor ran a round that sees the dead as quiet (a round probes peers
        # not heard from for an interval; adaptive rounds can come in between).
        for _ in range(20):
            await crew.run_for(30)
            rounds = [m.app.refresher.last for m in survivors]
            if all(r is not None and r.started_at >= killed_at + 300 for r in rounds):
                break
        else:
            raise AssertionError("the survivors did not refresh within two intervals")
        for member in survivors:
            table = member.app.dht.routing_table
            assert not dead & set(table.peers()), "a killed peer is still in a table"
            # Holds: every survivor keeps (at least) as many peers as are alive to hold,
            # up to what it held before.
            assert len(table) >= min(before[member.app.peer_id] - 10, 39) * 0.9
        evicted = sum(
            sample(m, "shardroute_routing_table_evictions_total", {"reason": r})
            for m in survivors
            for r in ("unresponsive", "failures")
        )
        assert evicted >= len(doomed)
        assert all(
            sample(m, "shardroute_routing_table_refreshes_total", {"trigger": "scheduled"}) >= 2
            for m in survivors
        )
