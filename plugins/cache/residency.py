"""`residency`: the model cache — loaded local models kept in an LRU under a memory budget.

Applies to models whose class says `is_local = True` (llama.cpp in this process,
Ollama on this host); cloud models are untouched and cost one dict lookup.

Before a call to a local model that is not resident yet, the least recently used
resident models that are idle (no call in flight) are evicted until the new one
fits `budget` (and `max_models`, when set):
- a llama.cpp model is closed (`herd.unload_model(alias)`), freeing its weights;
- an Ollama model is unloaded from the Ollama server (its Model's `unload()`,
  which sends keep_alive=0), then forgotten.
Ollama calls also get a `keep_alive` (default "10m", per alias in `keep_alive`),
so the server itself drops models nobody used for a while. With `idle_unload_s`
set, local models idle that long are unloaded even when the budget has room.

Auto by default: on when the local models named in plugins.toml do not all fit
the budget together (or `max_models` / `idle_unload_s` is set); `enabled = true`
also manages models called ad hoc as `provider/model`; `enabled = false` turns it off.

Sizes come from `[plugins.residency] sizes = { alias = "4GB" }` when given, else
from the model (`memory_bytes`), else from the GGUF header (weights + KV cache at
the alias's n_ctx), else `default_size`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from modelherd import hookimpl
from modelherd.lazy_model import LazyModel
from modelherd.plugins.cache.codec import parse_size
from modelherd.types import ChatRequest, ChatResponse, Metric
from pydantic import ConfigDict, field_validator

if TYPE_CHECKING:
    from modelherd.kernel import Herd

log = logging.getLogger("modelherd.residency")

#: "auto" budget: this share of the machine's RAM
_AUTO_SHARE = 0.6


class ResidencySettings(LazyModel):
    """`[plugins.residency]`."""

    model_config = ConfigDict(extra="forbid")

    #: None (auto): on when the local models in plugins.toml do not all fit the
    #: budget, or when max_models / idle_unload_s is set — otherwise there is nothing
    #: to evict, and an idle plugin must cost nothing per call
    enabled: bool | None = None
    #: bytes the resident local models may use together: a size ("12GB") or "auto"
    budget: int | str = "auto"
    #: at most this many local models resident at once (None: the budget decides)
    max_models: int | None = None
    #: per-alias sizes, overriding the estimate
    sizes: dict[str, int] = {}
    #: size assumed when nothing better is known
    default_size: int = 2 * 1000**3
    #: keep_alive sent with Ollama calls that do not set one
    ollama_keep_alive: str | None = "10m"
    #: per-alias keep_alive overrides
    keep_alive: dict[str, str] = {}
    #: unload local models idle this many seconds (None: only when the budget needs room)
    idle_unload_s: float | None = None

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, value: Any) -> int | str:
        if value == "auto":
            return "auto"
        return parse_size(value)

    @field_validator("default_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)

    @field_validator("sizes", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> dict[str, int]:
        if not isinstance(value, dict):
            raise ValueError('must be a table of alias = size, e.g. { local = "1GB" }')
        return {alias: parse_size(size) for alias, size in value.items()}

    def budget_bytes(self) -> int:
        if self.budget == "auto":
            import psutil

            return int(psutil.virtual_memory().total * _AUTO_SHARE)
        return int(self.budget)


@dataclass
class Resident:
    size: int
    inflight: int = 0
    last_used: float = 0.0


class _Gate:
    """Held around one call to a local model: it cannot be evicted while in flight."""

    __slots__ = ("alias", "manager")

    def __init__(self, manager: ResidencyManager, alias: str) -> None:
        self.manager = manager
        self.alias = alias

    async def __aenter__(self) -> None:
        await self.manager.enter(self.alias)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.manager.leave(self.alias)


class ResidencyManager:
    """The LRU of resident local models (most recently used last)."""

    __name__ = "residency-manager"

    def __init__(self, herd: Herd, settings: ResidencySettings) -> None:
        self.herd = herd
        self.settings = settings
        self.budget = settings.budget_bytes()
        self.resident: OrderedDict[str, Resident] = OrderedDict()
        self.evictions = 0
        self._local: dict[str, bool] = {}
        self._keep: dict[str, str | None] = {}
        self._sizes: dict[str, int] = dict(settings.sizes)
        self._lock = asyncio.Lock()
        self._warned: set[str] = set()
        self._idle_task: asyncio.Task[None] | None = None

    # ---- hooks ---------------------------------------------------------------------

    @hookimpl
    def acquire_admission(self, request: ChatRequest, herd: Herd) -> _Gate | None:
        alias = request.alias
        local = self._local.get(alias)
        if local is None:
            local = self._local[alias] = self._is_local(alias)
        if not local:
            return None
        if request.provider == "ollama" and "keep_alive" not in request.options:
            keep = self._keep.get(alias, "?")
            if keep == "?":
                keep = self._keep[alias] = self._keep_alive_for(alias)
            if keep is not None:
                request.options["keep_alive"] = keep
        return _Gate(self, alias)

    def _keep_alive_for(self, alias: str) -> str | None:
        """Precedence: the call's option > [models.<alias>] keep_alive > ours."""
        try:
            model = self.herd.get_model(alias)
        except Exception:
            return None
        if getattr(getattr(model, "settings", None), "keep_alive", None) is not None:
            return None  # the provider sends the alias's own keep_alive
        return self.settings.keep_alive.get(alias, self.settings.ollama_keep_alive)

    @hookimpl
    def after_call(self, request: ChatRequest, response: ChatResponse, herd: Herd) -> None:
        # a fallback served the call: it is loaded now, so it counts against the budget
        served = response.alias
        if (
            served
            and served != request.alias
            and response.cache_tier is None
            and served not in self.resident
            and self._local.setdefault(served, self._is_local(served))
        ):
            self.resident[served] = Resident(self.size_of(served), 0, time.monotonic())

    # ---- bookkeeping -----------------------------------------------------------------

    def _is_local(self, alias: str) -> bool:
        try:
            model = self.herd.get_model(alias)
        except Exception:
            return False  # the kernel reports a bad alias itself, with its own message
        return bool(getattr(model, "is_local", False))

    def size_of(self, alias: str) -> int:
        size = self._sizes.get(alias)
        if size is None:
            size = self._sizes[alias] = self._estimate(alias)
        return size

    def _estimate(self, alias: str) -> int:
        try:
            model = self.herd.get_model(alias)
        except Exception:
            return self.settings.default_size
        declared = getattr(model, "memory_bytes", None)
        if callable(declared):
            declared = declared()
        if isinstance(declared, int) and declared > 0:
            return declared
        path = getattr(model, "path", None)
        if path is not None:
            try:
                from modelherd.plugins.resources.gguf_estimate import estimate, read_facts

                n_ctx = getattr(getattr(model, "settings", None), "n_ctx", None)
                return int(estimate(read_facts(path), n_ctx=n_ctx).resident_at_load)
            except Exception:
                try:
                    return int(path.stat().st_size)
                except OSError:
                    pass
        return self.settings.default_size

    def used(self) -> int:
        return sum(entry.size for entry in self.resident.values())

    async def enter(self, alias: str) -> None:
        entry = self.resident.get(alias)
        if entry is not None:
            self.resident.move_to_end(alias)
            entry.inflight += 1
            return
        size = self.size_of(alias)
        async with self._lock:
            entry = self.resident.get(alias)
            if entry is None:
                await self._make_room(size, alias)
                entry = self.resident[alias] = Resident(size)
            entry.inflight += 1

    def leave(self, alias: str) -> None:
        entry = self.resident.get(alias)
        if entry is not None:
            entry.inflight = max(0, entry.inflight - 1)
            entry.last_used = time.monotonic()

    def _over(self, extra_size: int, extra_count: int) -> bool:
        if self.used() + extra_size > self.budget:
            return True
        limit = self.settings.max_models
        return limit is not None and len(self.resident) + extra_count > limit

    async def _make_room(self, size: int, incoming: str) -> None:
        while self._over(size, 1):
            victim = next(
                (a for a, e in self.resident.items() if e.inflight == 0 and a != incoming), None
            )
            if victim is None:
                if not self.resident and size > self.budget:
                    why = f"it alone needs about {size} bytes"
                else:
                    why = "every resident model is busy"
                if why not in self._warned:
                    self._warned.add(why)
                    log.warning(
                        "residency: loading '%s' goes over the memory budget (%d bytes) "
                        "because %s — raise [plugins.residency] budget or lower the number "
                        "of local models",
                        incoming,
                        self.budget,
                        why,
                    )
                return
            await self.evict(victim, reason="budget")

    async def evict(self, alias: str, reason: str) -> None:
        entry = self.resident.pop(alias, None)
        model = self.herd.loaded_models().get(alias)
        unload = getattr(model, "unload", None) if model is not None else None
        try:
            if callable(unload):
                # Ollama: free the server's memory (keep_alive=0) before forgetting it
                result = unload()
                if isinstance(result, Awaitable):
                    await result
            await self.herd.unload_model(alias)
        except Exception as exc:
            log.warning(
                "residency: unloading '%s' failed (%s: %s); it is forgotten anyway",
                alias,
                type(exc).__name__,
                exc,
            )
        self.evictions += 1
        log.info(
            "residency: unloaded '%s' (%s, %d bytes)", alias, reason, entry.size if entry else 0
        )
        if self.herd.wants_metrics:
            self.herd.emit(
                Metric(
                    "herd.residency.evictions",
                    1,
                    attributes={"herd.alias": alias, "reason": reason},
                )
            )

    # ---- idle unloading ------------------------------------------------------------------

    async def idle_loop(self, idle_s: float) -> None:
        period = max(0.05, min(idle_s / 2, 30.0))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for alias, entry in list(self.resident.items()):
                if entry.inflight == 0 and entry.last_used and now - entry.last_used >= idle_s:
                    await self.evict(alias, reason="idle")

    async def start(self) -> None:
        if self.settings.idle_unload_s:
            self._idle_task = asyncio.get_running_loop().create_task(
                self.idle_loop(self.settings.idle_unload_s)
            )

    async def stop(self) -> None:
        task, self._idle_task = self._idle_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def stats(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget,
            "used_bytes": self.used(),
            "evictions": self.evictions,
            "resident": {
                a: {"size": e.size, "inflight": e.inflight} for a, e in self.resident.items()
            },
        }


def load_settings(herd: Herd) -> ResidencySettings:
    return herd.plugin_config("residency", ResidencySettings, "docs/cache.md")


def manager_of(herd: Herd) -> ResidencyManager | None:
    """The running herd's residency manager (None when the plugin is off)."""
    plugin = herd.pm.get_plugin("residency-manager")
    return plugin if isinstance(plugin, ResidencyManager) else None


def configured_local_aliases(herd: Herd) -> list[str]:
    """Aliases in plugins.toml whose provider serves local models (no model is built)."""
    found = []
    for alias, table in herd.config.models.items():
        cls = herd.providers.get(str(table.get("provider", "")))
        if cls is not None and getattr(cls, "is_local", False):
            found.append(alias)
    return found


def wanted(herd: Herd, settings: ResidencySettings) -> ResidencyManager | None:
    """The manager to run, or None when residency would have nothing to do.

    Auto mode: on when the local models in plugins.toml cannot all fit the budget
    together (sizes as the manager estimates them; nothing is loaded to find out),
    or when max_models / idle_unload_s is set. Otherwise every local model can stay
    loaded, and the plugin stays out of the call path entirely.
    """
    if settings.enabled is False:
        return None
    manager = ResidencyManager(herd, settings)
    if settings.enabled or settings.idle_unload_s or settings.max_models is not None:
        return manager
    local = configured_local_aliases(herd)
    if len(local) >= 2 and sum(manager.size_of(a) for a in local) > manager.budget:
        return manager
    return None


@hookimpl
def register_settings(register: Callable[..., None]) -> None:
    register("residency", ResidencySettings, "docs/cache.md")


@hookimpl
def startup(herd: Herd) -> Awaitable[None] | None:
    if manager_of(herd) is not None:
        return None
    manager = wanted(herd, load_settings(herd))
    if manager is None:
        return None
    herd.register_plugin(manager, name="residency-manager")
    return manager.start()


@hookimpl
def shutdown(herd: Herd) -> Awaitable[None] | None:
    manager = manager_of(herd)
    if manager is None:
        return None
    herd.unregister_plugin(manager)
    return manager.stop()
