"""Fair shares of the DHT server: per-peer request rates and provider-record quotas.

- `RequestLimiter`: a token bucket per peer and message type; a request over its rate is
  refused (the stream is reset, as for any refused request), so one peer cannot take the
  server's time from the others.
- `ProviderQuota` (in `repositories`): how many records one provider and one source IP group
  may make us keep, and how many providers of one key may come from one IP group, so Sybil IDs
  from one network cannot fill a key's slots or the disk.

The group commit of received records is `kad/intake.py` (it needs tasks; this module is pure).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from shardroute import limits
from shardroute.identity.peer_id import PeerId
from shardroute.kad.messages import MessageType
from shardroute.kad.repositories import ProviderQuota


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float
    burst: float


DEFAULT_RATES: Mapping[MessageType, Rate] = {
    MessageType.FIND_NODE: Rate(*limits.KAD_RATE_LOOKUPS),
    MessageType.GET_PROVIDERS: Rate(*limits.KAD_RATE_LOOKUPS),
    MessageType.GET_VALUE: Rate(*limits.KAD_RATE_LOOKUPS),
    MessageType.PUT_VALUE: Rate(*limits.KAD_RATE_PUT_VALUE),
    MessageType.ADD_PROVIDER: Rate(*limits.KAD_RATE_ADD_PROVIDER),
    MessageType.PING: Rate(*limits.KAD_RATE_PING),
}


class RequestLimiter:
    """Token buckets per (peer, message type); the least recently seen peers are forgotten
    beyond `max_peers` (a forgotten peer starts again with a full bucket)."""

    def __init__(
        self,
        now: Callable[[], float],
        rates: Mapping[MessageType, Rate] = DEFAULT_RATES,
        *,
        max_peers: int = limits.KAD_RATE_TRACKED_PEERS,
    ) -> None:
        self._now = now
        self.rates = dict(rates)
        self.max_peers = max_peers
        self._buckets: OrderedDict[PeerId, dict[MessageType, list[float]]] = OrderedDict()

    def allow(self, peer: PeerId, kind: MessageType) -> bool:
        rate = self.rates.get(kind)
        if rate is None:
            return True
        now = self._now()
        buckets = self._buckets.get(peer)
        if buckets is None:
            buckets = self._buckets[peer] = {}
            if len(self._buckets) > self.max_peers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(peer)
        bucket = buckets.get(kind)
        if bucket is None:
            bucket = buckets[kind] = [rate.burst, now]
        tokens = min(rate.burst, bucket[0] + (now - bucket[1]) * rate.per_second)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True


def default_quota(
    *,
    per_peer: int = limits.KAD_MAX_RECORDS_PER_PEER,
    per_group: int = limits.KAD_MAX_RECORDS_PER_IP_GROUP,
    per_key_per_group: int = limits.KAD_MAX_PROVIDERS_PER_KEY_PER_GROUP,
) -> ProviderQuota:
    return ProviderQuota(
        per_peer=per_peer, per_group=per_group, per_key_per_group=per_key_per_group
    )
