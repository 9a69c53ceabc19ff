"""One tenant's enforcement state in this process: limits, local buckets, usage to carry.

With Redis, the shared buckets live there and these local ones are this process's
*share* (limit ÷ `replicas`), used only while Redis is unreachable. What the process
admits meanwhile is kept in `pending` and charged to Redis when it is back, so an
outage never hands every process a fresh full bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from modelherd.plugins.resources.tenants.settings import TenantSpec, TierLimits
from modelherd.plugins.resources.tenants.token_bucket import DailyCounter, SlotPool, TokenBucket


@dataclass(slots=True)
class RateLimit:
    """A per-minute limit: the shared bucket's shape and this process's share of it."""

    #: tokens per second and burst of the whole limit (what Redis enforces)
    rate: float
    capacity: float
    #: this process's share: the whole limit without Redis, limit / replicas with it
    local: TokenBucket
    #: admitted locally while Redis was down, not yet charged there
    pending: float = 0.0
    #: what Redis last said was left in the shared bucket (None: never asked)
    remote_left: float | None = None

    @classmethod
    def per_minute(cls, per_minute: float | None, burst_s: float, share: float) -> RateLimit | None:
        if per_minute is None:
            return None
        rate = per_minute / 60.0
        capacity = max(1.0, rate * burst_s)
        local = TokenBucket(rate * share, max(1.0, capacity * share))
        return cls(rate, capacity, local)

    def start_local(self, share: float) -> None:
        """Redis just failed: start our share from what was left, not from a full bucket."""
        if self.remote_left is not None:
            self.local.refill_to(self.remote_left * share)


@dataclass(slots=True)
class Tenant:
    """A configured tenant, or the one bucket every unconfigured tenant shares."""

    name: str
    tier: str
    limits: TierLimits
    #: 1 / replicas when Redis shares the limits, else 1
    share: float = 1.0
    allowed: frozenset[str] | None = None
    rpm: RateLimit | None = None
    tpm: RateLimit | None = None
    daily: DailyCounter = field(default_factory=DailyCounter)
    #: tokens used today as Redis last reported them, and used locally since
    day_seen: int = 0
    day_pending: int = 0
    slots: SlotPool | None = None
    #: True for the shared bucket of unconfigured tenants
    shared: bool = False

    @classmethod
    def build(cls, spec: TenantSpec, share: float = 1.0, shared: bool = False) -> Tenant:
        limits = spec.limits
        allowed = None if "*" in limits.allowed_models else frozenset(limits.allowed_models)
        slots = None
        if limits.max_concurrency:
            slots = SlotPool(max(1, math.ceil(limits.max_concurrency * share)))
        return cls(
            name=spec.name,
            tier=spec.tier,
            limits=limits,
            share=share,
            allowed=allowed,
            rpm=RateLimit.per_minute(limits.requests_per_minute, limits.burst_s, share),
            tpm=RateLimit.per_minute(limits.tokens_per_minute, limits.burst_s, share),
            slots=slots,
            shared=shared,
        )

    def local_day_used(self) -> int:
        """Today's use as this process can tell while Redis is down: the last shared
        count plus our own use scaled by replicas (each process gets its share of
        what was left)."""
        return self.day_seen + math.ceil(self.day_pending / self.share)

    def has_pending(self) -> bool:
        return bool(
            self.day_pending
            or (self.rpm is not None and self.rpm.pending)
            or (self.tpm is not None and self.tpm.pending)
        )
