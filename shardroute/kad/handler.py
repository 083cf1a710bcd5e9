"""The server side of the six DHT RPCs, as go-libp2p-kad-dht answers them (kad-dht.md §5).

`KadHandler.handle` returns the reply, None for ADD_PROVIDER (never answered), or raises
KadRequestRejected where go resets the stream: missing fields, a key too long, an invalid or
worse record, an ADD_PROVIDER with nothing usable. Nothing invalid reaches a store. A peer over
its request rate gets RequestRefused (the stream is reset too); received provider records go
through a `ProviderSink` (the group commit) under the provider-record quotas, and a store that
cannot write refuses them (StoreError) without touching the connection. Closer
peers never include the requester or ourselves, except the FIND_NODE target, which goes first
when we know its addresses. Answers pass through `fit_reply` (rust's 16 KiB).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Protocol

from multiaddr import Multiaddr

from shardroute import limits
from shardroute.errors import (
    InvalidPeerId,
    InvalidRecord,
    KadRequestRejected,
    RequestRefused,
    StoreError,
)
from shardroute.identity.peer_id import PeerId
from shardroute.kad.fairness import RequestLimiter
from shardroute.kad.messages import (
    KadMessage,
    MessageType,
    PeerInfo,
    ValueRecord,
    fit_reply,
    format_rfc3339,
)
from shardroute.kad.records import Validator
from shardroute.kad.repositories import (
    ProviderRecord,
    ProviderStore,
    ReceivedRecord,
    Refusal,
    ValueStore,
)

if TYPE_CHECKING:  # the handler stays free of anyio, which the clock module imports
    from shardroute.clock import Clock
    from shardroute.kad.config import DhtConfig

log = logging.getLogger(__name__)


class PeerDirectory(Protocol):
    """What the handler asks about peers (the routing-table keeper answers)."""

    def closest_infos(self, key: bytes, count: int, exclude: Collection[PeerId]) -> list[PeerInfo]:
        """Up to `count` table peers nearest SHA-256(key), with addresses."""
        ...

    def peer_info(self, peer: PeerId) -> PeerInfo | None: ...

    def visible_to(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> tuple[Multiaddr, ...]:
        """Of `addrs`, those `peer` can use."""
        ...

    def accepted_from(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> tuple[Multiaddr, ...]:
        """Of the addresses `peer` told us, those we keep."""
        ...

    def source_group(self, peer: PeerId) -> str | None:
        """The IP group `peer`'s connection comes from; None when exempt from group limits."""
        ...


class ProviderSink(Protocol):
    """Where received provider records are written (`kad.intake.ProviderIntake`)."""

    async def submit(self, item: ReceivedRecord) -> Refusal | None: ...

    async def submit_many(self, items: Sequence[ReceivedRecord]) -> list[Refusal | None]: ...


class RefusalReports(Protocol):
    def resource_refused(self, scope: str, resource: str) -> None: ...


# The refusal metric's (scope, resource) for each reason a record is not stored.
REFUSAL_SCOPES = {
    Refusal.KEY_FULL: None,  # not a budget of the sender's: the key is popular
    Refusal.PEER_QUOTA: ("peer", "provider_records"),
    Refusal.GROUP_QUOTA: ("ip", "provider_records"),
    Refusal.KEY_GROUP: ("ip", "provider_records"),
}


class KadHandler:
    def __init__(
        self,
        *,
        self_id: PeerId,
        providers: ProviderStore,
        values: ValueStore,
        validator: Validator,
        peers: PeerDirectory,
        clock: Clock,
        config: DhtConfig,
        intake: ProviderSink,
        limiter: RequestLimiter | None = None,
        refusals: RefusalReports | None = None,
        providers_per_reply: int = limits.KAD_PROVIDERS_PER_REPLY,
    ) -> None:
        """The per-key provider cap belongs to the ProviderStore, where it is atomic with the
        upsert. A provider's addresses are handed out for at most the record's TTL."""
        if providers_per_reply < 0:
            raise ValueError("providers_per_reply must be >= 0")
        self.self_id = self_id
        self.providers = providers
        self.values = values
        self.validator = validator
        self.peers = peers
        self.clock = clock
        self.k = config.k
        self.provider_ttl = config.provider_ttl
        self.provider_addr_ttl = min(config.provider_addr_ttl, config.provider_ttl)
        self.max_key_len = limits.KAD_MAX_PROVIDER_KEY
        self.max_value_age = config.max_value_age
        self.providers_per_reply = providers_per_reply
        self.intake = intake
        self.limiter = limiter
        self.refusals = refusals
        self._handlers: dict[
            MessageType, Callable[[PeerId, KadMessage], Awaitable[KadMessage | None]]
        ] = {
            MessageType.FIND_NODE: self._find_node,
            MessageType.GET_PROVIDERS: self._get_providers,
            MessageType.ADD_PROVIDER: self._add_provider,
            MessageType.GET_VALUE: self._get_value,
            MessageType.PUT_VALUE: self._put_value,
            MessageType.PING: self._ping,
        }

    async def handle(self, sender: PeerId, request: KadMessage) -> KadMessage | None:
        """`sender` is the authenticated remote peer of the stream."""
        handler = self._handlers.get(request.type)
        if handler is None:
            raise KadRequestRejected(f"unsupported message type {request.type!r}")
        if self.limiter is not None and not self.limiter.allow(sender, request.type):
            self._refused("peer", "kad_requests")
            raise RequestRefused(f"{sender} is over its {request.type.name} rate")
        return await handler(sender, request)

    async def add_providers(self, sender: PeerId, requests: Sequence[KadMessage]) -> None:
        """Several ADD_PROVIDERs that arrived together on one stream, stored as one batch.
        A request that is invalid or over the rate ends the run: those before it are kept,
        then it raises as `handle` would."""
        received: list[ReceivedRecord] = []
        try:
            for request in requests:
                if self.limiter is not None and not self.limiter.allow(sender, request.type):
                    self._refused("peer", "kad_requests")
                    raise RequestRefused(f"{sender} is over its {request.type.name} rate")
                received.append(self._received_record(sender, request))
        except (KadRequestRejected, RequestRefused):
            if received:
                await self._store_before_refusal(sender, received)
            raise
        if received:
            self._count(await self.intake.submit_many(received), sender)

    async def _store_before_refusal(
        self, sender: PeerId, received: Sequence[ReceivedRecord]
    ) -> None:
        """Keep the records that came before a refused request. A store that cannot take them
        is logged and counted here: the refusal, not the store, decides the stream's fate
        (a StoreError would let the stream go on, as it does for a peer within its rights)."""
        try:
            self._count(await self.intake.submit_many(received), sender)
        except StoreError as exc:
            log.warning("ADD_PROVIDER from %s not stored: %s", sender, exc)
            self._refused("store", "writes")

    def _count(self, refusals: Sequence[Refusal | None], sender: PeerId) -> None:
        for refusal in refusals:
            if refusal is None:
                continue
            # Not a protocol error (the key is full, or the sender spent its quota), and
            # ADD_PROVIDER has no reply: the record is simply not kept.
            log.debug("ADD_PROVIDER from %s not stored: %s", sender, refusal.value)
            scope = REFUSAL_SCOPES[refusal]
            if scope is not None:
                self._refused(*scope)

    def _refused(self, scope: str, resource: str) -> None:
        if self.refusals is not None:
            self.refusals.resource_refused(scope, resource)

    def _for(self, sender: PeerId, info: PeerInfo) -> PeerInfo:
        """`info` with only the addresses `sender` can use."""
        return PeerInfo(info.peer_id, self.peers.visible_to(sender, info.addrs))

    def _closer(self, key: bytes, sender: PeerId) -> list[PeerInfo]:
        found = self.peers.closest_infos(key, self.k, (sender, self.self_id))
        # The directory promises this; a reply must never break it.
        shown = [self._for(sender, p) for p in found if p.peer_id not in (sender, self.self_id)]
        return [p for p in shown if p.addrs]

    async def _ping(self, sender: PeerId, request: KadMessage) -> KadMessage:
        return KadMessage(type=MessageType.PING)

    async def _find_node(self, sender: PeerId, request: KadMessage) -> KadMessage:
        if not request.key:
            raise KadRequestRejected("FIND_NODE without a key")
        closer = self._closer(request.key, sender)
        try:
            target: PeerId | None = PeerId.from_bytes(request.key)
        except InvalidPeerId:
            target = None  # any pre-image is a valid target; it just names no peer
        if target is not None:
            known = self.peers.peer_info(target)
            if known is not None:
                known = self._for(sender, known)
            if known is not None and known.addrs:
                rest = [p for p in closer if p.peer_id != target]
                closer = [known, *rest][: self.k]
        return fit_reply(KadMessage(type=MessageType.FIND_NODE, closer_peers=tuple(closer)))

    def _check_provider_key(self, key: bytes) -> None:
        if not key:
            raise KadRequestRejected("provider request without a key")
        if len(key) > self.max_key_len:
            raise KadRequestRejected(f"provider key of {len(key)} bytes exceeds {self.max_key_len}")

    async def _get_providers(self, sender: PeerId, request: KadMessage) -> KadMessage:
        self._check_provider_key(request.key)
        now = self.clock.wall()
        records = await self.providers.get_providers(request.key, now, self.providers_per_reply)
        providers = []
        for record in records:
            addrs = record.live_addrs(now)
            if not addrs and (known := self.peers.peer_info(record.provider)) is not None:
                addrs = known.addrs  # the stored ones aged out; what we know now, if anything
            providers.append(PeerInfo(record.provider, self.peers.visible_to(sender, addrs)))
        return fit_reply(
            KadMessage(
                type=MessageType.GET_PROVIDERS,
                key=request.key,
                provider_peers=tuple(providers),
                closer_peers=tuple(self._closer(request.key, sender)),
            )
        )

    async def _add_provider(self, sender: PeerId, request: KadMessage) -> None:
        self._count([await self.intake.submit(self._received_record(sender, request))], sender)

    def _received_record(self, sender: PeerId, request: KadMessage) -> ReceivedRecord:
        """The record an ADD_PROVIDER asks us to keep; KadRequestRejected if it is unusable."""
        self._check_provider_key(request.key)
        now = self.clock.wall()
        usable = [p for p in request.provider_peers if p.peer_id == sender and p.addrs]
        if len(usable) < len(request.provider_peers):
            log.debug(
                "ADD_PROVIDER from %s: %d entries for other peers or without addresses ignored",
                sender,
                len(request.provider_peers) - len(usable),
            )
        if not usable:
            raise KadRequestRejected("ADD_PROVIDER carried no entry for the sender with an address")
        # Several entries for the sender: one record, the addresses of all of them.
        addrs = self.peers.accepted_from(
            sender, tuple(dict.fromkeys(a for p in usable for a in p.addrs))
        )
        if not addrs:
            raise KadRequestRejected("ADD_PROVIDER carried no address we could hand out")
        record = ProviderRecord(
            key=request.key,
            provider=sender,
            addrs=addrs[: limits.KAD_MAX_ADDRS_PER_PEER],
            received_at=now,
            expires_at=now + self.provider_ttl,
            addrs_expire_at=now + self.provider_addr_ttl,
        )
        return ReceivedRecord(record, self.peers.source_group(sender))

    async def _get_value(self, sender: PeerId, request: KadMessage) -> KadMessage:
        if not request.key:
            raise KadRequestRejected("GET_VALUE without a key")
        now = self.clock.wall()
        stored = await self.values.get(request.key)
        record = None
        if stored is not None and now - stored.received_at <= self.max_value_age:
            try:
                self.validator.validate(request.key, stored.value, now)
                record = ValueRecord(request.key, stored.value, format_rfc3339(stored.received_at))
            except InvalidRecord:
                pass  # expired IPNS and the like: never returned
        return fit_reply(
            KadMessage(
                type=MessageType.GET_VALUE,
                key=request.key,
                record=record,
                closer_peers=tuple(self._closer(request.key, sender)),
            )
        )

    async def _put_value(self, sender: PeerId, request: KadMessage) -> KadMessage:
        record = request.record
        if record is None or not request.key:
            raise KadRequestRejected("PUT_VALUE without a key or record")
        if record.key != request.key:
            raise KadRequestRejected("PUT_VALUE record key differs from the message key")
        now = self.clock.wall()
        try:
            self.validator.validate(request.key, record.value, now)
        except InvalidRecord as exc:
            raise KadRequestRejected(f"PUT_VALUE refused: {exc}") from exc
        existing = await self.values.get(request.key)
        if (
            existing is not None
            and existing.value != record.value
            and now - existing.received_at <= self.max_value_age
        ):
            try:
                self.validator.validate(request.key, existing.value, now)
            except InvalidRecord:
                pass  # ours went bad (expired): the new one replaces it
            else:
                try:
                    best = self.validator.select(request.key, [record.value, existing.value])
                except InvalidRecord as exc:
                    raise KadRequestRejected(f"PUT_VALUE refused: {exc}") from exc
                if best != 0:
                    raise KadRequestRejected("PUT_VALUE refused: we hold a better record")
        await self.values.put(request.key, record.value, now)
        # go echoes the request with the time it stamped; its client compares the value.
        stamped = ValueRecord(request.key, record.value, format_rfc3339(now))
        return KadMessage(type=MessageType.PUT_VALUE, key=request.key, record=stamped)
