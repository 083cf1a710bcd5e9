"""The server side of the six DHT RPCs, as go-libp2p-kad-dht answers them (handlers.go).

Returns the reply, None for ADD_PROVIDER (never answered), or raises KadRequestRejected where
go resets the stream. Nothing invalid reaches a store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from shardroute.clock import Clock
from shardroute.errors import InvalidRecord, KadRequestRejected
from shardroute.identity.peer_id import PeerId
from shardroute.kad.messages import (
    KadMessage,
    MessageType,
    PeerInfo,
    ValueRecord,
    fit_reply,
    format_rfc3339,
)
from shardroute.kad.records import Validator
from shardroute.kad.stores import ProviderRecord, ProviderStore, ValueStore

log = logging.getLogger(__name__)

# go rejects provider keys longer than 80 bytes (handlers.go).
MAX_PROVIDER_KEY = 80
# Stored values older than this are not returned (go's maxRecordAge).
MAX_VALUE_AGE = 48 * 3600.0
# Providers returned in one answer: keeps replies well under rust's 16 KiB.
PROVIDERS_PER_REPLY = 20

ClosestPeers = Callable[[bytes, int, Collection[PeerId]], list[PeerInfo]]
PeerLookup = Callable[[PeerId], PeerInfo | None]


class KadHandler:
    def __init__(
        self,
        *,
        self_id: PeerId,
        providers: ProviderStore,
        values: ValueStore,
        validator: Validator,
        closest_peers: ClosestPeers,
        peer_info: PeerLookup,
        clock: Clock,
        k: int = 20,
        provider_ttl: float = 12 * 3600.0,
        provider_addr_ttl: float | None = None,
        max_key_len: int = MAX_PROVIDER_KEY,
        max_value_age: float = MAX_VALUE_AGE,
    ) -> None:
        self.self_id = self_id
        self.providers = providers
        self.values = values
        self.validator = validator
        self.closest_peers = closest_peers
        self.peer_info = peer_info
        self.clock = clock
        self.k = k
        self.provider_ttl = provider_ttl
        # go keeps provider addresses 24 h; never longer than the record itself.
        self.provider_addr_ttl = min(provider_addr_ttl or 24 * 3600.0, provider_ttl)
        self.max_key_len = max_key_len
        self.max_value_age = max_value_age

    async def handle(self, sender: PeerId, request: KadMessage) -> KadMessage | None:
        kind = request.type
        if kind is MessageType.FIND_NODE:
            return self._find_node(sender, request)
        if kind is MessageType.GET_PROVIDERS:
            return await self._get_providers(sender, request)
        if kind is MessageType.ADD_PROVIDER:
            await self._add_provider(sender, request)
            return None
        if kind is MessageType.GET_VALUE:
            return await self._get_value(sender, request)
        if kind is MessageType.PUT_VALUE:
            return await self._put_value(request)
        if kind is MessageType.PING:
            return KadMessage(type=MessageType.PING)
        raise KadRequestRejected(f"unsupported message type {kind}")

    def _closer(self, key: bytes, sender: PeerId) -> tuple[PeerInfo, ...]:
        return tuple(self.closest_peers(key, self.k, (sender, self.self_id)))

    def _find_node(self, sender: PeerId, request: KadMessage) -> KadMessage:
        closer = list(self._closer(request.key, sender))
        try:
            target = PeerId.from_bytes(request.key)
        except Exception:
            target = None
        if target is not None:
            known = self.peer_info(target) if target != self.self_id else None
            if known is not None and known.addrs:
                closer = [known, *(p for p in closer if p.peer_id != target)][: self.k]
        return fit_reply(KadMessage(type=MessageType.FIND_NODE, closer_peers=tuple(closer)))

    def _check_provider_key(self, key: bytes) -> None:
        if not key:
            raise KadRequestRejected("provider request without a key")
        if len(key) > self.max_key_len:
            raise KadRequestRejected(f"provider key of {len(key)} bytes exceeds {self.max_key_len}")

    async def _get_providers(self, sender: PeerId, request: KadMessage) -> KadMessage:
        self._check_provider_key(request.key)
        now = self.clock.wall()
        records = await self.providers.get_providers(request.key, now, PROVIDERS_PER_REPLY)
        providers = []
        for record in records:
            addrs = record.live_addrs(now)
            if not addrs and (known := self.peer_info(record.provider)) is not None:
                addrs = known.addrs
            providers.append(PeerInfo(record.provider, addrs))
        return fit_reply(
            KadMessage(
                type=MessageType.GET_PROVIDERS,
                key=request.key,
                provider_peers=tuple(providers),
                closer_peers=self._closer(request.key, sender),
            )
        )

    async def _add_provider(self, sender: PeerId, request: KadMessage) -> None:
        self._check_provider_key(request.key)
        now = self.clock.wall()
        stored = 0
        for info in request.provider_peers:
            if info.peer_id != sender:
                log.info(
                    "ADD_PROVIDER from %s names another peer %s: ignored", sender, info.peer_id
                )
                continue
            if not info.addrs:
                continue
            await self.providers.add_provider(
                ProviderRecord(
                    key=request.key,
                    provider=sender,
                    addrs=info.addrs,
                    received_at=now,
                    expires_at=now + self.provider_ttl,
                    addrs_expire_at=now + self.provider_addr_ttl,
                )
            )
            stored += 1
        if not stored:
            raise KadRequestRejected("ADD_PROVIDER carried no entry for the sender with an address")

    async def _get_value(self, sender: PeerId, request: KadMessage) -> KadMessage:
        if not request.key:
            raise KadRequestRejected("GET_VALUE without a key")
        record = None
        stored = await self.values.get(request.key)
        now = self.clock.wall()
        if stored is not None and now - stored.received_at <= self.max_value_age:
            try:
                self.validator.validate(request.key, stored.value, now)
                record = ValueRecord(request.key, stored.value, format_rfc3339(stored.received_at))
            except InvalidRecord:
                record = None  # expired IPNS and the like: never returned
        return fit_reply(
            KadMessage(
                type=MessageType.GET_VALUE,
                key=request.key,
                record=record,
                closer_peers=self._closer(request.key, sender),
            )
        )

    async def _put_value(self, request: KadMessage) -> KadMessage:
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
        if existing is not None and existing.value != record.value:
            try:
                self.validator.validate(request.key, existing.value, now)
                better_old = self.validator.select(request.key, [record.value, existing.value]) != 0
            except InvalidRecord:
                better_old = False
            if better_old:
                raise KadRequestRejected("PUT_VALUE refused: we hold a better record")
        await self.values.put(request.key, record.value, now)
        return KadMessage(
            type=MessageType.PUT_VALUE,
            key=request.key,
            record=ValueRecord(record.key, record.value),
        )
