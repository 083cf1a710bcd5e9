"""Joining: /dnsaddr/ seeds from a real DNS server on 127.0.0.1, backoff, the stored table."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dns.asyncresolver
import dns.message
import dns.rdatatype
import dns.rrset
import pytest
from multiaddr import Multiaddr

from shardroute.kad.memory_repositories import MemoryStorage
from shardroute.kad.repositories import SavedPeer
from tests.support.fleet import fleet, grow

pytestmark = [pytest.mark.anyio, pytest.mark.network]


@contextmanager
def dns_server(zone: dict[str, list[str]]) -> Iterator[int]:
    """A UDP DNS server answering TXT queries from `zone` (name -> strings); its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            name = query.question[0].name.to_text()
            texts = zone.get(name)
            if texts is None:
                response.set_rcode(3)  # NXDOMAIN
            else:
                quoted = [f'"{t}"' for t in texts]
                response.answer.append(dns.rrset.from_text(name, 60, "IN", "TXT", *quoted))
            sock.sendto(response.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        sock.close()


def resolver(port: int) -> dns.asyncresolver.Resolver:
    r = dns.asyncresolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = port
    r.timeout = r.lifetime = 2.0
    return r


async def test_bootstrap_through_nested_dnsaddr_seeds() -> None:
    async with fleet() as crew:
        await grow(crew, 12)
        seeds = crew.members[:3]
        zone = {
            # one seed directly, the others through a nested name; junk lines are skipped
            "_dnsaddr.seeds.test.": [
                f"dnsaddr={seeds[0].addr}",
                "dnsaddr=/dnsaddr/more.seeds.test",
                "dnsaddr=/not/a/multiaddr",
                "unrelated text",
            ],
            "_dnsaddr.more.seeds.test.": [f"dnsaddr={s.addr}" for s in seeds[1:]],
        }
        with dns_server(zone) as port:
            newcomer = await crew.add([])
            joiner = newcomer.app.bootstrapper
            joiner.dns_resolver = resolver(port)
            assert await joiner.connect_bootstrap([Multiaddr("/dnsaddr/seeds.test")]) == 3
            # with a /p2p/ suffix only that peer's records count
            wanted = Multiaddr(f"/dnsaddr/more.seeds.test/p2p/{seeds[2].app.peer_id}")
            assert await joiner.connect_bootstrap([wanted]) == 1
            # an unknown name is logged and skipped, not fatal
            assert await joiner.connect_bootstrap([Multiaddr("/dnsaddr/nx.test")]) == 0
            joiner.addrs = [Multiaddr("/dnsaddr/seeds.test")]
            assert await joiner.bootstrap()
        assert len(newcomer.app.dht.routing_table) >= 10


async def test_bootstrap_backs_off_while_no_seed_answers_and_a_stored_table_still_serves() -> None:
    async with fleet() as crew:
        await grow(crew, 5)
        down = crew.members[4]
        dead_addr = down.addr
        await crew.kill(down)
        # A node whose only bootstrap peer is down retries: 1 s, 2 s, 4 s ... (jittered x0.5-1.5).
        member = await crew.add([dead_addr], wait_joined=False)
        clock = crew.fake_clock
        delays = []
        for _ in range(3):
            await clock.wait_sleepers(crew.sleepers() + 1)  # + the backoff's own sleep
            wake = clock.next_wakeup()
            assert wake is not None
            delays.append(wake - clock.monotonic())
            clock.advance(wake - clock.monotonic())
        assert 0.5 <= delays[0] <= 1.5 and 1.0 <= delays[1] <= 3.0 and 2.0 <= delays[2] <= 6.0
        attempts = member.app.metrics.registry.get_sample_value(
            "shardroute_bootstrap_attempts_total", {"result": "empty"}
        )
        assert attempts is not None and attempts >= 3
        assert not member.app.joined.is_set()
        await crew.kill(member)
        # A node with the same dead seed but a stored table joins through the stored peers.
        live = crew.members[0]
        storage = MemoryStorage()
        await storage.routing.save(
            [SavedPeer(live.app.peer_id, (live.app.host.listen_addrs[0],), 0.0, None)]
        )
        member = await crew.add([dead_addr], storage=storage)
        assert live.app.peer_id in member.app.dht.routing_table
        report = await member.app.dht.get_closest_peers(b"some key")
        assert len(report.peers) >= 3
