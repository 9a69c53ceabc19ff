"""`scheduler`: admission with a bounded priority queue, and actions per load state.

    [plugins.scheduler]
    enabled = true
    max_concurrency = 32        # calls running at once (the capacity)
    max_queue = 256             # calls waiting beyond it; more are shed
    queue_timeout_s = 30        # a queued call's deadline
    [plugins.scheduler.actions]
    idle = ["unload_idle"]      # unload local models unused for idle_unload_after_s
    medium = []                 # "balance": send the call to the least busy deployment
    high = ["spill"]            # primary -> its fallbacks while high
    critical = ["shed"]         # refuse calls with priority <= shed_priority (+ "degrade")

Off by default: then no per-call hook is registered. The state (load_state.py) is
computed from calls running vs capacity, queue length and wait, p95 latency and
memory pressure, with hysteresis; each change goes to the `on_load_state` hook and
is a `herd.load_state` gauge metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Literal

from modelherd import hookimpl
from modelherd.errors import HerdError, OverloadedError
from modelherd.lazy_model import LazyModel
from modelherd.plugins.resources.optimizer.runtime import unload_local
from modelherd.plugins.resources.scheduler import RUNTIME
from modelherd.plugins.resources.scheduler.load_state import (
    LEVEL,
    LoadStateMachine,
    Signals,
    Thresholds,
)
from modelherd.stash import StashKey
from modelherd.types import ChatRequest, ChatResponse, Metric
from pydantic import ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from modelherd.kernel import Herd

#: the alias whose primary attempt is spilled to a fallback (admitted while "high")
_SPILL_FROM = StashKey[str]()


log = logging.getLogger("modelherd.scheduler")

Action = Literal["unload_idle", "balance", "spill", "shed", "degrade"]
DEFAULT_ACTIONS: dict[str, list[Action]] = {
    "idle": ["unload_idle"],
    "medium": [],
    "high": ["spill"],
    "critical": ["shed"],
}
_ALLOWED: dict[str, set[str]] = {
    "idle": {"unload_idle"},
    "low": set(),
    "medium": {"balance"},
    "high": {"balance", "spill"},
    "critical": {"balance", "spill", "shed", "degrade"},
}


class SchedulerSettings(LazyModel):
    """`[plugins.scheduler]`."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    max_concurrency: int = Field(32, ge=1)
    max_queue: int = Field(256, ge=0)
    queue_timeout_s: float = Field(30.0, gt=0)
    target_latency_s: float | None = Field(None, gt=0)
    medium: float = 0.5
    high: float = 0.8
    critical: float = 0.95
    hysteresis: float = Field(0.1, ge=0)
    cooldown_s: float = Field(2.0, ge=0)
    idle_after_s: float = Field(30.0, ge=0)
    idle_unload_after_s: float = Field(300.0, ge=0)
    memory_high: float = Field(0.9, gt=0, le=1)
    #: at critical, calls with priority <= this are refused ("shed")
    shed_priority: int = 0
    #: alias -> smaller alias to use at critical ("degrade")
    degrade: dict[str, str] = Field(default_factory=dict)
    #: how "balance" picks among an alias and its fallbacks
    balance: Literal["least_busy", "lowest_latency"] = "least_busy"
    #: seconds between background state checks (idle detection, calming down)
    tick_s: float = Field(1.0, gt=0)
    actions: dict[str, list[Action]] = Field(default_factory=lambda: dict(DEFAULT_ACTIONS))

    @model_validator(mode="after")
    def _check_actions(self) -> SchedulerSettings:
        for state, acts in self.actions.items():
            if state not in _ALLOWED:
                raise ValueError(f"actions: unknown state '{state}' (use {', '.join(_ALLOWED)})")
            bad = [a for a in acts if a not in _ALLOWED[state]]
            if bad:
                raise ValueError(
                    f"actions.{state}: {bad[0]} cannot run in state {state} "
                    f"(allowed: {', '.join(sorted(_ALLOWED[state])) or 'none'})"
                )
        if not self.medium < self.high < self.critical:
            raise ValueError("thresholds must rise: medium < high < critical")
        return self


def load_settings(herd: Herd) -> SchedulerSettings:
    return herd.plugin_config("scheduler", SchedulerSettings, "docs/resources.md")


class SpilledError(HerdError):
    """The scheduler moved this attempt to the alias's fallback (state high)."""

    fallback_ok = True


def _granted(future: asyncio.Future[None]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _p95(samples: deque[float]) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


class Scheduler:
    """Capacity, the priority queue, the load state and its actions."""

    def __init__(self, herd: Herd, settings: SchedulerSettings) -> None:
        self.herd = herd
        self.s = settings
        self.machine = LoadStateMachine(
            Thresholds(
                medium=settings.medium,
                high=settings.high,
                critical=settings.critical,
                hysteresis=settings.hysteresis,
                cooldown_s=settings.cooldown_s,
                idle_after_s=settings.idle_after_s,
                memory_high=settings.memory_high,
            )
        )
        # states the user lists replace their default actions; the others keep theirs
        merged = {**DEFAULT_ACTIONS, **settings.actions}
        self.actions = {k: frozenset(v) for k, v in merged.items()}
        self.in_flight = 0
        self.by_alias: dict[str, int] = {}
        self.last_used: dict[str, float] = {}
        self.latency: dict[str, deque[float]] = {}
        self.waits: deque[float] = deque(maxlen=256)
        self.durations: deque[float] = deque(maxlen=256)
        # heap of (-priority, seq, future); a popped cancelled future is skipped
        self.queue: list[tuple[int, int, asyncio.Future[None]]] = []
        self.queued = 0
        self.seq = itertools.count()
        self.last_call = time.monotonic()
        self.last_eval = 0.0
        self.p95_wait = 0.0
        self.p95_latency = 0.0
        self.memory_used = 0.0
        self.memory_at = 0.0
        self.task: asyncio.Task[None] | None = None

    # ---- state ---------------------------------------------------------------

    @property
    def state(self) -> str:
        return self.machine.state

    def _memory(self, now: float) -> float:
        if now - self.memory_at >= 1.0:
            import psutil

            self.memory_used = psutil.virtual_memory().percent / 100.0
            self.memory_at = now
        return self.memory_used

    def evaluate(self, force: bool = False) -> str:
        """Recompute the state: counts every time, percentiles at most every 50 ms."""
        now = time.monotonic()
        if force or now - self.last_eval >= 0.05:
            self.last_eval = now
            self.p95_wait = _p95(self.waits)
            self.p95_latency = _p95(self.durations)
        signals = Signals(
            in_flight=self.in_flight,
            capacity=self.s.max_concurrency,
            queued=self.queued,
            max_queue=self.s.max_queue,
            p95_wait_s=self.p95_wait,
            queue_timeout_s=self.s.queue_timeout_s,
            p95_latency_s=self.p95_latency,
            target_latency_s=self.s.target_latency_s,
            memory_used=self._memory(now),
            seconds_since_call=now - self.last_call,
        )
        old, new = self.machine.update(signals, now)
        if old != new:
            self.herd.emit(
                Metric(
                    "herd.load_state",
                    LEVEL[new],
                    kind="gauge",
                    attributes={"herd.load_state": new, "herd.load_state.from": old},
                )
            )
            self.herd.hook.on_load_state(old=old, new=new, herd=self.herd)
        return new

    def active(self, action: str) -> bool:
        return action in self.actions.get(self.machine.state, ())

    # ---- admission -----------------------------------------------------------

    @hookimpl
    def acquire_admission(self, request: ChatRequest, herd: Herd) -> Any:
        return _Slot(self, request)

    def _shed(self, request: ChatRequest, why: str) -> OverloadedError:
        retry = max(0.5, _p95(self.durations) or 1.0)
        self.herd.emit(
            Metric(
                "herd.scheduler.shed",
                1,
                attributes={"herd.alias": request.alias, "herd.reason": why},
            )
        )
        return OverloadedError(
            f"'{request.alias}' call shed: modelherd is overloaded ({self.machine.state}; {why}) "
            f"— retry in {retry:.1f}s, or raise the call's priority",
            retry_after=retry,
        )

    def _retarget(self, request: ChatRequest, alias: str) -> None:
        spec = self.herd.resolve(alias)
        request.alias, request.provider, request.model = alias, spec.provider, spec.model
        for key, value in spec.options.items():
            request.options.setdefault(key, value)

    def _balance(self, request: ChatRequest) -> None:
        spec = self.herd.resolve(request.alias)
        if not spec.fallbacks:
            return
        pool = [request.alias, *spec.fallbacks]
        if self.s.balance == "lowest_latency":
            best = min(pool, key=lambda a: _p95(self.latency.get(a, deque())) or 0.0)
        else:
            best = min(pool, key=lambda a: self.by_alias.get(a, 0))
        if best != request.alias and self.by_alias.get(best, 0) < self.by_alias.get(
            request.alias, 0
        ):
            self._retarget(request, best)

    async def enter(self, request: ChatRequest) -> float:
        """Wait for a slot (or be shed); returns the seconds waited."""
        self.last_call = time.monotonic()  # a call ends "idle" at once
        state = self.evaluate()
        if state != "low":
            if self.active("shed") and request.priority <= self.s.shed_priority:
                raise self._shed(request, f"priority {request.priority} <= {self.s.shed_priority}")
            if self.active("degrade") and request.alias in self.s.degrade:
                self._retarget(request, self.s.degrade[request.alias])
            if self.active("balance"):
                self._balance(request)
            if self.active("spill"):
                request.stash[_SPILL_FROM] = request.alias
        if self.in_flight < self.s.max_concurrency and not self.queued:
            self.in_flight += 1
            self._count(request.alias)
            return 0.0
        if self.queued >= self.s.max_queue:
            self._evict_lowest(request)
        started = time.monotonic()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self.queue, (-request.priority, next(self.seq), future))
        self.queued += 1
        self.evaluate(force=True)
        try:
            await asyncio.wait_for(asyncio.shield(future), self.s.queue_timeout_s)
        except TimeoutError:
            if not _granted(future):
                future.cancel()
                self.queued -= 1
                raise self._shed(
                    request, f"waited {self.s.queue_timeout_s:g}s in the queue"
                ) from None
        except OverloadedError:
            raise  # evicted from a full queue by a higher-priority call (already counted)
        except BaseException:
            if _granted(future):
                self._hand_over()  # granted as we were cancelled: pass the slot on
            else:
                future.cancel()
                self.queued -= 1
            raise
        # the releasing call handed its slot over: in_flight already counts us
        self._count(request.alias)
        waited = time.monotonic() - started
        self.waits.append(waited)
        return waited

    def _evict_lowest(self, request: ChatRequest) -> None:
        """Queue full: shed the lowest-priority waiter if the newcomer outranks it."""
        live = [entry for entry in self.queue if not entry[2].done()]
        if not live:
            raise self._shed(request, "the queue is full")
        lowest = max(live, key=lambda e: (e[0], e[1]))  # largest -priority = lowest priority
        if -lowest[0] >= request.priority:
            raise self._shed(request, f"the queue is full ({self.s.max_queue} waiting)")
        self.queued -= 1
        lowest[2].set_exception(
            OverloadedError(
                f"call shed from a full queue for a higher-priority one ({self.machine.state}) — "
                f"retry in 1s, or raise the call's priority",
                retry_after=1.0,
            )
        )

    def _count(self, alias: str) -> None:
        self.by_alias[alias] = self.by_alias.get(alias, 0) + 1

    def _hand_over(self) -> None:
        """Give a freed slot to the best waiter, or free it."""
        while self.queue:
            _, _, future = heapq.heappop(self.queue)
            if not future.done():
                self.queued -= 1
                future.set_result(None)
                return
        self.in_flight -= 1

    def _release(self, alias: str, duration: float) -> None:
        self.by_alias[alias] -= 1
        now = time.monotonic()
        self.last_used[alias] = self.last_call = now
        self.durations.append(duration)
        self.latency.setdefault(alias, deque(maxlen=64)).append(duration)
        self._hand_over()
        if self.machine.state != "low":  # a release can only lower the load: in "low"
            self.evaluate()  # there is nothing to recompute (the ticker does)

    # ---- actions outside admission -------------------------------------------

    @hookimpl(tryfirst=True)  # a guard: before optimizers write placement options
    def before_call(self, request: ChatRequest, herd: Herd) -> ChatResponse | None:
        # spill: the primary attempt of a call admitted while "high" goes to a fallback
        if (
            request.stash.get(_SPILL_FROM, None) == request.alias
            and self.active("spill")
            and herd.resolve(request.alias).fallbacks
        ):
            raise SpilledError(
                f"'{request.alias}' is under {self.state} load — the call moves to its fallback"
            )
        return None

    async def unload_idle(self) -> list[str]:
        """Unload local models unused for `idle_unload_after_s` (state idle)."""
        done = []
        now = time.monotonic()
        for alias, model in self.herd.loaded_models().items():
            if not getattr(model, "is_local", False) or self.by_alias.get(alias, 0):
                continue
            idle_for = now - self.last_used.get(alias, self.last_call)
            if idle_for >= self.s.idle_unload_after_s and await unload_local(self.herd, alias):
                done.append(alias)
                log.info("scheduler: unloaded idle local model '%s'", alias)
        return done

    async def tick(self) -> None:
        self.evaluate(force=True)
        if self.active("unload_idle"):
            await self.unload_idle()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.s.tick_s)
            try:
                await self.tick()
            except Exception:  # the ticker must outlive one bad tick
                log.exception("scheduler: background tick failed")


class _Slot:
    """One call's place in the scheduler."""

    __slots__ = ("alias", "owner", "request", "started")

    def __init__(self, owner: Scheduler, request: ChatRequest) -> None:
        self.owner = owner
        self.request = request
        self.alias = request.alias
        self.started = 0.0

    async def __aenter__(self) -> None:
        waited = await self.owner.enter(self.request)
        self.alias = self.request.alias  # balance/degrade may have moved it
        if waited and self.owner.herd.wants_metrics:
            self.owner.herd.emit(
                Metric(
                    "herd.scheduler.queue_wait",
                    waited,
                    "s",
                    "histogram",
                    {"herd.alias": self.alias},
                )
            )
        self.started = time.monotonic()

    async def __aexit__(self, *exc: object) -> None:
        self.owner._release(self.alias, time.monotonic() - self.started)


def start(herd: Herd) -> Awaitable[None] | None:
    """The plugin's startup: register the per-call half only when enabled."""
    settings = load_settings(herd)
    if not settings.enabled:
        return None
    scheduler = Scheduler(herd, settings)
    herd.register_plugin(scheduler, name="scheduler-calls")
    herd.stash[RUNTIME] = scheduler

    async def start() -> None:
        scheduler.task = asyncio.get_running_loop().create_task(scheduler.run())

    return start()


def stop(herd: Herd) -> Awaitable[None] | None:
    scheduler = herd.stash.pop(RUNTIME, None)
    if scheduler is None:
        return None
    herd.unregister_plugin(scheduler)

    async def stop() -> None:
        if scheduler.task is not None:
            scheduler.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await scheduler.task
            scheduler.task = None

    return stop()
