"""The DHT's configuration: what `Settings` says about Kademlia, plus protocol constants.

Defaults are not written here: the settings fields default to `Settings()`'s values and the
protocol constants to `limits`, so a test that builds a `DhtConfig()` gets what `serve` runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardroute import limits
from shardroute.config import Mode, Settings

__all__ = ["DhtConfig", "Mode"]

_DEFAULTS = Settings()


@dataclass(frozen=True, slots=True, kw_only=True)
class DhtConfig:
    protocol_id: str = _DEFAULTS.protocol
    k: int = _DEFAULTS.k
    alpha: int = _DEFAULTS.alpha
    beta: int = _DEFAULTS.beta
    # GET_PROVIDERS lookups' alpha; every other lookup runs with `alpha`.
    provider_alpha: int = _DEFAULTS.provider_alpha
    # A request unanswered this long no longer holds an alpha slot.
    stall_timeout: float = _DEFAULTS.stall_timeout
    request_timeout: float = _DEFAULTS.request_timeout
    query_timeout: float = _DEFAULTS.query_timeout
    put_timeout: float = limits.KAD_PUT_TIMEOUT
    provider_ttl: float = _DEFAULTS.provider_ttl
    # How long a server hands out a provider's addresses (capped at the record's TTL).
    provider_addr_ttl: float = _DEFAULTS.provider_addr_ttl
    max_providers_per_key: int = _DEFAULTS.max_providers_per_key
    max_records_per_peer: int = _DEFAULTS.max_records_per_peer
    max_records_per_ip_group: int = _DEFAULTS.max_records_per_ip_group
    max_providers_per_key_per_group: int = _DEFAULTS.max_providers_per_key_per_group
    mode: Mode = _DEFAULTS.mode
    diversity: bool = _DEFAULTS.diversity_filter
    diversity_exempt_private: bool = _DEFAULTS.diversity_exempt_private
    replacement_cache_size: int = limits.KAD_REPLACEMENT_CACHE
    max_failures: int = limits.KAD_MAX_FAILURES
    # GET_VALUE: stop after this many valid answers (the local value counts); 0 = whole lookup.
    value_quorum: int = _DEFAULTS.value_quorum
    # Local values older than this are not served or counted (kad-dht.md §3: 48 h).
    max_value_age: float = limits.KAD_MAX_VALUE_AGE

    def __post_init__(self) -> None:
        if self.k < 1 or self.alpha < 1 or self.beta < 1 or self.provider_alpha < 1:
            raise ValueError("k, alpha, provider_alpha and beta must be at least 1")
        for name in (
            "request_timeout",
            "query_timeout",
            "put_timeout",
            "provider_ttl",
            "stall_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.provider_addr_ttl < 0:
            raise ValueError("provider_addr_ttl must not be negative")
        if self.max_providers_per_key < 1:
            raise ValueError("max_providers_per_key must be at least 1")
        if self.mode not in ("server", "client"):
            raise ValueError(f"mode must be 'server' or 'client', not {self.mode!r}")
        if self.value_quorum < 0:
            raise ValueError("value_quorum must be >= 0")

    @classmethod
    def from_settings(cls, settings: Settings) -> DhtConfig:
        return cls(
            protocol_id=settings.protocol,
            k=settings.k,
            alpha=settings.alpha,
            beta=settings.beta,
            provider_alpha=settings.provider_alpha,
            stall_timeout=settings.stall_timeout,
            request_timeout=settings.request_timeout,
            query_timeout=settings.query_timeout,
            provider_ttl=settings.provider_ttl,
            provider_addr_ttl=settings.provider_addr_ttl,
            max_providers_per_key=settings.max_providers_per_key,
            max_records_per_peer=settings.max_records_per_peer,
            max_records_per_ip_group=settings.max_records_per_ip_group,
            max_providers_per_key_per_group=settings.max_providers_per_key_per_group,
            mode=settings.mode,
            diversity=settings.diversity_filter,
            diversity_exempt_private=settings.diversity_exempt_private,
            value_quorum=settings.value_quorum,
        )
