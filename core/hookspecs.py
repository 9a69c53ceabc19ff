"""Every hook a modelherd plugin can implement.

pluggy runs implementations last-registered-first; we order them in bands with
`tryfirst` / `trylast`, and each hook below names its bands. Hooks are synchronous:
real I/O lives in the async methods of the objects plugins hand back (models, cache
tiers, admission gates). A hook that needs to start async work at startup returns
an awaitable, and the kernel awaits it.

Registration hooks take a `register` callback, so new keyword arguments can be added
later without breaking old plugins (the simonw/llm pattern).

docs/hooks.md documents each hook with its exact signature; tests/test_meta.py fails
when one is undocumented or never exercised.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from .events import HerdEvent
    from .kernel import Herd
    from .provider import Model
    from .types import ChatRequest, ChatResponse, Metric, ModelSpec

hookspec = pluggy.HookspecMarker("modelherd")


@hookspec
def register_providers(register: Callable[..., None]) -> None:
    """At first use of the kernel: declare provider classes.

    Call `register(ModelClass)` for each `modelherd.Model` subclass the plugin ships;
    the class's `provider` attribute is the name used in plugins.toml
    (`[models.x] provider = "..."`). Not firstresult. No I/O, no SDK import.
    """


@hookspec(firstresult=True)
def provide_model(spec: ModelSpec, herd: Herd) -> Model | None:
    """When an alias is first called: build the `Model` that serves `spec`.

    Return a Model instance, or None to let the next plugin try. firstresult.
    The kernel's own default (trylast) instantiates the class registered for
    `spec.provider`; implement this only to construct models in a custom way.
    Models are cached per alias, so this runs once per alias per process.
    """


@hookspec
def acquire_admission(request: ChatRequest, herd: Herd) -> AbstractAsyncContextManager[Any] | None:
    """Before anything else in a call: return an async context manager to enter.

    The kernel enters every returned manager (in hook order) around the rest of the
    call and exits them when the call ends, success or error. A manager may wait
    (priority queue) or raise `QuotaExceededError` / `OverloadedError`.
    Return None when the plugin has nothing to enforce for this request.
    Bands: tryfirst = tenant quotas, default = load scheduler.
    """


@hookspec(firstresult=True)
def before_call(request: ChatRequest, herd: Herd) -> ChatResponse | None:
    """Before each attempt at one model (the primary, then each fallback).

    Optimizers set `request.options` here (context size, GPU layers, keep_alive)
    and return None. A plugin may answer synchronously by returning a ChatResponse
    (the call then skips the provider). Raising a `HerdError` with
    `fallback_ok=True` (e.g. `CircuitOpenError`) moves the call to the next fallback.
    firstresult. Bands: tryfirst = guards (circuit breaker), default = optimizers,
    trylast = tracing start.
    """


@hookspec
def after_call(
    request: ChatRequest, response: ChatResponse, herd: Herd, valid: bool | None
) -> None:
    """After every successful call, cache hits included (`response.cache_tier` set).

    `valid` is the caller's `validate=` verdict (None when the call had none).
    Observe only: monitors, audit, residency bookkeeping. Not firstresult.
    """


@hookspec
def on_error(request: ChatRequest, error: BaseException, herd: Herd, final: bool) -> None:
    """After an attempt fails (each failed attempt, then the final error), on both roads.

    `final` is True exactly once per failed call, for the error the caller will see —
    an admission refusal, a cache-only miss and the last fallback's error included.
    Observe only; the retry policy is the kernel's. Not firstresult.
    """


@hookspec
def on_metric(metric: Metric, herd: Herd) -> None:
    """For each measurement: latency, tokens, cache hit/miss, errors, queue wait …

    Called only when at least one plugin implements it. Must be fast and must not
    raise: buffer and export elsewhere. Not firstresult.
    """


@hookspec
def track_event(event: HerdEvent, herd: Herd) -> None:
    """When something happens outside a chat call: a tool run (`ToolExecuted`), an
    embeddings batch (`EmbeddingsDone`) — typed dataclasses in `modelherd.events`.

    One hook for every kind: look at the event's type, ignore kinds you do not know.
    Called only when some plugin implements it. Observe only; must not raise.
    Not firstresult.
    """


@hookspec
def register_settings(register: Callable[..., None]) -> None:
    """At plugin load: declare the schema of your `[plugins.<name>]` table.

    Call `register(name, SettingsModel, docs="docs/yours.md")` with a pydantic model
    (`extra="forbid"`). The kernel validates the table on every command, before any
    other hook runs, so a typo is one error line (exit 2) — never a plugin silently
    off. No I/O. Not firstresult.
    """


@hookspec
def register_cache_tiers(register: Callable[..., None], herd: Herd) -> None:
    """At startup: declare response-cache tiers.

    Call `register(tier)` with an object implementing `modelherd.cache.CacheTier`
    (async get / set / clear / stats, and an `order`: lower is faster and is asked
    first). The kernel asks tiers fastest first and fills faster tiers on a hit
    in a slower one. Not firstresult.
    """


@hookspec
def startup(herd: Herd) -> Awaitable[None] | None:
    """Once, when the kernel starts inside an event loop (first call, or `async with herd`).

    Return an awaitable to open async resources (connection pools, exporters,
    background samplers). Not firstresult.
    """


@hookspec
def shutdown(herd: Herd) -> Awaitable[None] | None:
    """Once, at `await herd.aclose()`: return an awaitable that closes what startup opened."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """When the `herd` CLI starts: add click commands or groups with `cli.add_command`.

    Import heavy modules inside the command functions, not here.
    """


@hookspec
def register_agents(register: Callable[..., None]) -> None:
    """At first use: declare agents with `register(AgentClass)`.

    The class subclasses `modelherd.Agent`; its `name` is what `herd run NAME`
    and `[agents.NAME]` in plugins.toml refer to.
    """


@hookspec(historic=True)
def add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    """When a plugin is registered: add the hook specifications of its own family.

    Call `pluginmanager.add_hookspecs(module)` with a module of `@hookspec` functions
    (pytest's `pytest_addhooks` is the model). Historic: a plugin registered late
    still gets the call. The agents add their market-data hook this way
    (agents/hookspecs.py), so the kernel's own specs hold only kernel hooks.
    """


@hookspec
def on_alert(alert: Any, herd: Herd) -> None:
    """When a KPI alert fires or resolves (`alert.state` is "firing" or "resolved").

    Notifiers (log, webhook, chat) implement this. Must not raise. Not firstresult.
    """


@hookspec
def on_load_state(old: str, new: str, herd: Herd) -> None:
    """When the load scheduler's state changes (idle, low, medium, high, critical)."""
