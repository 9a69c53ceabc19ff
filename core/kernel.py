"""Herd: the plugin manager and configuration turned into one call pipeline.

Every call takes the same road (docs/architecture.md):
resolve alias -> admission -> cache lookup -> coalesce -> before_call -> provider
(timeout, retries, fallbacks) -> validate -> cache store -> after_call / on_error
-> on_metric.
Hooks that no plugin implements are skipped without a call: the kernel's own cost
per call is a product feature (bench/overhead.py).
"""

from __future__ import annotations

import asyncio
import difflib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import anyio
import pluggy
from pydantic import BaseModel

from . import loader
from .agent import Agent
from .cache import CacheTier, TieredCache, coalesce_key
from .coalesce import Coalescer
from .config import HerdConfig, load_config, load_env, validate_table
from .errors import (
    AllModelsFailedError,
    CacheMissError,
    CallTimeoutError,
    ConfigError,
    HerdError,
    PluginLoadError,
    ProviderError,
    UnknownModelError,
)
from .provider import Model
from .retry import retry_delay
from .types import ChatRequest, ChatResponse, Message, Metric, ModelSpec, trusted

hookimpl = pluggy.HookimplMarker("modelherd")

MessagesIn = str | Sequence[Message | dict[str, Any]]
_S = TypeVar("_S", bound=BaseModel)
_CACHE_MODES = frozenset({"default", "no-store", "no-cache", "only"})
#: request.context key (kernel-reserved) for the caller's own options and timeout,
#: which a fallback request is rebuilt from
_CALL_KEY = "herd.call"
Validator = Callable[[ChatResponse], bool]


class _CoreDefaults:
    """The kernel's own default implementations, last in every band."""

    @hookimpl(trylast=True)
    def provide_model(self, spec: ModelSpec, herd: Herd) -> Model | None:
        cls = herd.providers.get(spec.provider)
        return cls(spec, herd) if cls is not None else None


class Herd:
    """The kernel. `await herd.chat("local", "hi")`, or `herd.chat_sync(...)` in scripts."""

    def __init__(
        self,
        config: HerdConfig | None = None,
        *,
        config_path: str | None = None,
        profile: str | None = None,
        env: dict[str, str] | None = None,
        strict: bool = False,
        load_entry_points: bool = True,
        plugins: Sequence[Any] = (),
    ) -> None:
        self.config = config if config is not None else load_config(config_path, profile)
        if config is not None and profile:
            from .config import apply_profile

            apply_profile(self.config, profile)
        self.env = env if env is not None else load_env()
        self.strict = strict
        self._load_entry_points = load_entry_points
        self._extra_plugins = list(plugins)
        self._pm: pluggy.PluginManager | None = None
        self.plugin_records: list[loader.PluginRecord] = []
        self._providers: dict[str, type[Model]] | None = None
        self._agents: dict[str, type[Agent] | str] | None = None
        self._models: dict[str, Model] = {}
        self._specs: dict[str, ModelSpec] = {}
        self._cache: TieredCache | None = None
        self._coalescer = Coalescer()
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._runner: asyncio.Runner | None = None
        self._has: dict[str, bool] = {}

    # ---- plugins -------------------------------------------------------------

    @property
    def pm(self) -> pluggy.PluginManager:
        """The plugin manager, loaded lazily on first use."""
        if self._pm is None:
            pm = loader.new_plugin_manager()
            pm.register(_CoreDefaults(), name="core")
            self._pm = pm
            if self._load_entry_points:
                self.plugin_records = loader.load_entry_point_plugins(
                    pm,
                    self.config.disabled_plugins,
                    self.config.herd.allow_plugins,
                    self.strict,
                )
            for index, plugin in enumerate(self._extra_plugins):
                name = getattr(plugin, "__name__", f"{type(plugin).__name__}-{index}")
                self.plugin_records.append(loader.register_object(pm, plugin, name))
            self._refresh_hook_flags()
        return self._pm

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def register_plugin(self, plugin: Any, name: str | None = None) -> None:
        """Register a plugin object at run time (tests, scripts)."""
        name = name or getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin)}"
        self.plugin_records.append(loader.register_object(self.pm, plugin, name))
        self._providers = None
        self._agents = None
        self._refresh_hook_flags()

    def call_each(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call every implementation of a registration/lifecycle hook on its own.

        pluggy aborts a hook call at the first raising implementation; for these
        hooks one broken plugin must not take the others down, so each is called
        separately and a failure is recorded (shown by `herd plugins` / `herd doctor`)
        or, with strict=True, raised.
        """
        results: list[Any] = []
        caller = getattr(self.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):  # pluggy's order: last registered first
            try:
                result = impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
            except Exception as exc:
                if self.strict:
                    raise PluginLoadError(
                        f"plugin '{impl.plugin_name}' failed in {hook_name}: "
                        f"{type(exc).__name__}: {exc} — fix or disable it"
                    ) from exc
                self._record_hook_failure(hook_name, impl.plugin_name, exc)
                continue
            if result is not None:
                results.append(result)
        return results

    def _record_hook_failure(self, hook_name: str, plugin_name: str, exc: BaseException) -> None:
        message = f"{hook_name} raised {type(exc).__name__}: {exc}"
        for record in self.plugin_records:
            if record.name == plugin_name:
                record.status = "failed"
                record.error = message
                return
        self.plugin_records.append(
            loader.PluginRecord(name=plugin_name, module="?", status="failed", error=message)
        )

    def unregister_plugin(self, plugin: Any) -> None:
        self.pm.unregister(plugin)
        self._refresh_hook_flags()

    def _refresh_hook_flags(self) -> None:
        assert self._pm is not None
        self._has = {
            name: bool(getattr(self._pm.hook, name).get_hookimpls())
            for name in ("acquire_admission", "before_call", "after_call", "on_error", "on_metric")
        }

    def plugin_settings(self, name: str) -> dict[str, Any]:
        """The `[plugins.<name>]` table, raw (see `plugin_config` for the typed form)."""
        return self.config.plugin_settings(name)

    def plugin_config(self, name: str, model: type[_S], docs: str) -> _S:
        """The `[plugins.<name>]` table validated by `model`; a bad key or value is one
        ConfigError line naming the file, the table, the key and the fix."""
        where = f"{self.config.source}: [plugins.{name}]"
        return validate_table(model, self.config.plugin_settings(name), where, docs)

    @property
    def providers(self) -> dict[str, type[Model]]:
        if self._providers is None:
            found: dict[str, type[Model]] = {}

            def register(cls: type[Model]) -> None:
                found[cls.provider] = cls

            self.call_each("register_providers", register=register)
            self._providers = found
        return self._providers

    @property
    def agents(self) -> dict[str, type[Agent] | str]:
        """Registered agents: name -> class, or "module:Class" until first used."""
        if self._agents is None:
            found: dict[str, type[Agent] | str] = {}

            def register(agent: type[Agent] | str, target: str | None = None) -> None:
                # register(AgentClass), or register("name", "module:Class") so that
                # listing agents (the CLI does it at every start) imports none of them
                if isinstance(agent, str):
                    if target is None:
                        raise TypeError('register("name", "module:Class") needs the target')
                    found[agent] = target
                else:
                    found[agent.name] = agent

            self.call_each("register_agents", register=register)
            self._agents = found
        return self._agents

    def agent_class(self, name: str) -> type[Agent] | None:
        """The class of agent `name`, importing it on first use (None if unknown)."""
        entry = self.agents.get(name)
        if isinstance(entry, str):
            module_name, _, attr = entry.partition(":")
            entry = getattr(loader.import_module(module_name), attr)
            assert self._agents is not None
            self._agents[name] = entry
        return entry

    def agent(self, name: str, **settings: Any) -> Agent:
        """Build the agent registered as `name` with its `[agents.<name>]` settings."""
        cls = self.agent_class(name)
        if cls is None:
            close = difflib.get_close_matches(name, list(self.agents), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                f"no agent named '{name}' — {hint}installed agents: "
                f"{', '.join(sorted(self.agents)) or 'none'} (see `herd plugins`)"
            )
        return cls(self, settings)

    # ---- models --------------------------------------------------------------

    def resolve(self, alias: str | None) -> ModelSpec:
        """The ModelSpec for an alias, or for a `provider/model` pair."""
        name = alias or self.config.herd.default_model
        spec = self._specs.get(name)
        if spec is not None:
            return spec
        if name in self.config.models:
            spec = self._specs[name] = self.config.spec(name)
            return spec
        provider, sep, model = name.partition("/")
        if sep and provider in self.providers:
            spec = self._specs[name] = ModelSpec(alias=name, provider=provider, model=model)
            return spec
        choices = list(self.config.models)
        close = difflib.get_close_matches(name, choices, n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise UnknownModelError(
            f"unknown model '{name}' — {hint}use an alias from `herd models` or "
            f"provider/model (e.g. ollama/llama3.2), or add [models.{name}] to plugins.toml"
        )

    def get_model(self, alias: str | None) -> Model:
        """The Model serving `alias`, built once per process."""
        name = alias or self.config.herd.default_model
        model = self._models.get(name)
        if model is None:
            spec = self.resolve(name)
            model = self.hook.provide_model(spec=spec, herd=self)
            if model is None:
                raise ConfigError(self._unknown_provider_message(spec))
            self._models[name] = model
        return model

    @property
    def cache(self) -> TieredCache | None:
        """The response cache (None before start() or when no tier is registered)."""
        return self._cache

    def loaded_models(self) -> dict[str, Model]:
        return dict(self._models)

    async def unload_model(self, alias: str) -> bool:
        """Close and forget a built model (residency eviction). True if it was loaded."""
        model = self._models.pop(alias, None)
        if model is None:
            return False
        await model.aclose()
        return True

    def _unknown_provider_message(self, spec: ModelSpec) -> str:
        failed = [
            r for r in self.plugin_records if r.name == spec.provider and r.status != "loaded"
        ]
        if failed:
            rec = failed[0]
            why = rec.error or "it is disabled in plugins.toml or HERD_PLUGINS"
            return (
                f"[models.{spec.alias}] provider '{spec.provider}' is not available: {why} — "
                f"run `herd doctor`"
            )
        close = difflib.get_close_matches(spec.provider, list(self.providers), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return (
            f"{self.config.source}: [models.{spec.alias}] unknown provider '{spec.provider}' — "
            f"{hint}installed providers: {', '.join(sorted(self.providers)) or 'none'}"
        )

    # ---- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Open async resources (startup hooks, cache tiers). Runs once; idempotent."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            for result in self.call_each("startup", herd=self):
                if result is not None:
                    await result
            tiers: list[CacheTier] = []
            self.call_each("register_cache_tiers", register=tiers.append, herd=self)
            self._cache = TieredCache(tiers, self) if tiers else None
            self._started = True

    async def aclose(self) -> None:
        """Close models, cache tiers and whatever startup hooks opened."""
        for alias in list(self._models):
            await self.unload_model(alias)
        if self._cache is not None:
            await self._cache.aclose()
            self._cache = None
        if self._pm is not None and self._started:
            for result in self.call_each("shutdown", herd=self):
                if result is not None:
                    try:
                        await result
                    except Exception as exc:  # closing must go on for the others
                        self._record_hook_failure("shutdown", "?", exc)
        self._started = False
        self._start_lock = None

    async def __aenter__(self) -> Herd:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def close(self) -> None:
        """Close the sync facade's event loop and everything opened in it."""
        if self._runner is not None:
            self._runner.run(self.aclose())
            self._runner.close()
            self._runner = None

    # ---- metrics -------------------------------------------------------------

    def emit(self, metric: Metric) -> None:
        """Send one measurement to `on_metric` (free when nobody listens)."""
        if self._has.get("on_metric"):
            self.hook.on_metric(metric=metric, herd=self)

    @property
    def wants_metrics(self) -> bool:
        return bool(self._has.get("on_metric"))

    # ---- the call pipeline ---------------------------------------------------

    def build_request(
        self,
        model: str | None,
        messages: MessagesIn,
        *,
        tenant: str | None = None,
        agent: str | None = None,
        cache: str = "default",
        cache_ttl: float | None = None,
        timeout: float | None = None,
        priority: int = 0,
        stream: bool = False,
        **options: Any,
    ) -> ChatRequest:
        spec = self.resolve(model)
        if isinstance(messages, str):
            msgs = [trusted(Message, {"role": "user", "content": messages})]
        else:
            msgs = [m if isinstance(m, Message) else Message(**m) for m in messages]
        if not msgs:
            raise ConfigError("messages is empty — pass a prompt string or a list of messages")
        if cache not in _CACHE_MODES:
            raise ConfigError(
                f"cache={cache!r} is not a cache mode — use one of: {', '.join(sorted(_CACHE_MODES))}"
            )
        merged = {**spec.options, **options} if spec.options else options
        # every field is either already validated (spec, messages) or checked above:
        # skipping pydantic's second pass saves several µs on every call
        return trusted(
            ChatRequest,
            {
                "alias": spec.alias,
                "provider": spec.provider,
                "model": spec.model,
                "messages": msgs,
                "options": merged,
                "tenant": tenant,
                "agent": agent,
                "stream": stream,
                "cache": cache,
                "cache_ttl": cache_ttl,
                "timeout": timeout if timeout is not None else spec.timeout,
                "priority": priority,
                "context": {_CALL_KEY: (options, timeout)} if spec.fallbacks else {},
            },
        )

    async def chat(
        self,
        model: str | None = None,
        messages: MessagesIn = "",
        *,
        validate: Validator | None = None,
        **kwargs: Any,
    ) -> ChatResponse:
        """Call a model through the whole pipeline; return its ChatResponse.

        Keyword arguments: tenant, agent, cache ("default" | "no-store" | "no-cache" |
        "only"), cache_ttl, timeout (seconds per attempt), priority, and any model
        option (temperature, max_tokens, seed, stop, response_format …).
        `validate(response) -> bool`: an answer that fails it is returned but never
        cached, and counts against the model's quality KPI.
        """
        request = self.build_request(model, messages, **kwargs)
        return await self.run_request(request, validate)

    def chat_sync(
        self, model: str | None = None, messages: MessagesIn = "", **kwargs: Any
    ) -> ChatResponse:
        """`chat` for scripts without an event loop (one loop kept across calls)."""
        if self._runner is None:
            self._runner = asyncio.Runner()
        return self._runner.run(self.chat(model, messages, **kwargs))

    async def run_request(
        self, request: ChatRequest, validate: Validator | None = None
    ) -> ChatResponse:
        if not self._started:
            await self.start()
        started = time.perf_counter()
        if self._has.get("acquire_admission"):
            async with AsyncExitStack() as stack:
                for gate in self.hook.acquire_admission(request=request, herd=self):
                    if gate is not None:
                        await stack.enter_async_context(gate)
                return await self._admitted(request, validate, started)
        return await self._admitted(request, validate, started)

    async def _admitted(
        self, request: ChatRequest, validate: Validator | None, started: float
    ) -> ChatResponse:
        cache = self._cache
        # the cache policy decides which requests get a key ([plugins.cache] cache_sampled)
        key = cache.key_for(request) if cache is not None else coalesce_key(request)
        try:
            if (
                cache is not None
                and key is not None
                and request.cache in ("default", "no-store", "only")
            ):
                hit = await cache.lookup(key)
                if hit is not None:
                    hit.latency_s = time.perf_counter() - started
                    hit.alias = request.alias
                    self._finish(request, hit)
                    return hit
            if request.cache == "only":
                raise CacheMissError(
                    f"no cache tier holds an answer for this '{request.alias}' request — "
                    f'call again without cache="only"'
                )
            if key is not None:
                # a follower got the leader's answer: only the leader stores it
                response, led = await self._coalescer.run_led(
                    key, lambda: self._call_chain(request)
                )
            else:
                response, led = await self._call_chain(request), True
        except BaseException as exc:
            request.context["final"] = True
            if self._has.get("on_error"):
                self.hook.on_error(request=request, error=exc, herd=self)
            if self._has.get("on_metric"):
                self.emit(Metric("herd.errors", 1, attributes=_attrs(request, type(exc).__name__)))
            raise
        response.latency_s = time.perf_counter() - started
        valid = True
        if validate is not None:
            try:
                valid = bool(validate(response))
            except Exception:
                valid = False
            request.context["valid"] = valid
            self.emit(Metric("herd.validation", 1.0 if valid else 0.0, attributes=_attrs(request)))
        if (
            cache is not None
            and key is not None
            and valid
            and led
            and request.cache in ("default", "no-cache")
        ) and cache.storable(response):
            await cache.store(key, response, request.cache_ttl)
        self._finish(request, response)
        return response

    def _finish(self, request: ChatRequest, response: ChatResponse) -> None:
        if self._has.get("after_call"):
            self.hook.after_call(request=request, response=response, herd=self)
        if self._has.get("on_metric"):
            attrs = _attrs(request)
            self.emit(
                Metric(
                    "gen_ai.client.operation.duration", response.latency_s, "s", "histogram", attrs
                )
            )
            self.emit(
                Metric(
                    "herd.cache.lookups",
                    1,
                    attributes={**attrs, "tier": response.cache_tier or "miss"},
                )
            )
            if response.cache_tier is None:
                usage = response.usage
                self.emit(
                    Metric(
                        "gen_ai.client.token.usage",
                        usage.input_tokens,
                        "{token}",
                        "histogram",
                        {**attrs, "gen_ai.token.type": "input"},
                    )
                )
                self.emit(
                    Metric(
                        "gen_ai.client.token.usage",
                        usage.output_tokens,
                        "{token}",
                        "histogram",
                        {**attrs, "gen_ai.token.type": "output"},
                    )
                )
                for name, value in response.provider_metrics.items():
                    self.emit(Metric(name, value, "s", "histogram", attrs))

    def _candidates(self, request: ChatRequest) -> list[str]:
        spec = self.resolve(request.alias)
        seen = [request.alias]
        for name in spec.fallbacks:
            if name not in seen:
                seen.append(name)
        return seen

    def _request_for(self, request: ChatRequest, alias: str) -> ChatRequest:
        if alias == request.alias:
            return request
        spec = self.resolve(alias)
        # the fallback gets its own alias's defaults plus what the caller passed — not
        # the primary alias's defaults (an Ollama num_ctx would make a cloud fallback
        # refuse the call) nor what plugins wrote into the primary's options
        call_options, call_timeout = request.context.get(_CALL_KEY, (request.options, None))
        return request.model_copy(
            update={
                "alias": alias,
                "provider": spec.provider,
                "model": spec.model,
                "options": {**spec.options, **call_options},
                "timeout": call_timeout if call_timeout is not None else spec.timeout,
                "context": {_CALL_KEY: (call_options, call_timeout)},
            }
        )

    async def _call_chain(self, request: ChatRequest) -> ChatResponse:
        """The primary model, then each fallback, each with its own retries."""
        candidates = self._candidates(request)
        errors: list[tuple[str, BaseException]] = []
        for index, alias in enumerate(candidates):
            attempt_request = self._request_for(request, alias)
            try:
                response = await self._with_retries(attempt_request)
            except HerdError as exc:
                errors.append((alias, exc))
                if not exc.fallback_ok or index == len(candidates) - 1:
                    break
                self.emit(
                    Metric("herd.fallbacks", 1, attributes=_attrs(request, type(exc).__name__))
                )
                continue
            if index > 0:
                response.fallback_from = request.alias
            return response
        if len(errors) == 1:
            raise errors[0][1]
        raise AllModelsFailedError(request.alias, errors)

    async def _with_retries(self, request: ChatRequest) -> ChatResponse:
        herd_cfg = self.config.herd
        model = self.get_model(request.alias)
        retries = model.spec.retries if model.spec.retries is not None else herd_cfg.retries
        timeout = request.timeout if request.timeout is not None else herd_cfg.timeout
        attempt = 0
        while True:
            if self._has.get("before_call"):
                answered = self.hook.before_call(request=request, herd=self)
                if answered is not None:
                    return answered
            try:
                # asyncio.timeout costs a few µs; anyio's cancel scope costs ~4x that,
                # and this runs on every call (bench/overhead.py)
                async with asyncio.timeout(timeout):
                    response = await model.chat(request)
                response.attempts = attempt + 1
                if not response.alias:
                    response.alias = request.alias
                return response
            except TimeoutError:
                error: HerdError = CallTimeoutError(
                    f"'{request.alias}' ({request.provider}) gave no answer within {timeout:g}s — "
                    f"pass a larger timeout= or set [models.{request.alias}] timeout"
                )
            except HerdError as exc:
                error = exc
            except Exception as exc:  # a provider bug: report it typed, never retry it
                error = ProviderError(
                    f"provider '{request.provider}' raised {type(exc).__name__}: {exc} — "
                    f"this is a bug in its plugin; please report it"
                )
                error.retryable = False
            if self._has.get("on_error"):
                self.hook.on_error(request=request, error=error, herd=self)
            delay = (
                retry_delay(error, attempt, herd_cfg.backoff_base, herd_cfg.backoff_max)
                if attempt < retries
                else None
            )
            if delay is None:
                raise error
            self.emit(Metric("herd.retries", 1, attributes=_attrs(request, type(error).__name__)))
            attempt += 1
            await anyio.sleep(delay)

    # ---- streaming -----------------------------------------------------------

    async def stream(
        self, model: str | None = None, messages: MessagesIn = "", **kwargs: Any
    ) -> AsyncIterator[str | ChatResponse]:
        """Yield text chunks as they arrive, then the final ChatResponse.

        Retries and fallbacks apply until the first chunk has been yielded; after
        that an error reaches the caller. A cached answer is replayed as one chunk.
        """
        request = self.build_request(model, messages, stream=True, **kwargs)
        if not self._started:
            await self.start()
        started = time.perf_counter()
        async with AsyncExitStack() as stack:
            if self._has.get("acquire_admission"):
                for gate in self.hook.acquire_admission(request=request, herd=self):
                    if gate is not None:
                        await stack.enter_async_context(gate)
            async for item in self._stream_admitted(request, started):
                yield item

    async def _stream_admitted(
        self, request: ChatRequest, started: float
    ) -> AsyncIterator[str | ChatResponse]:
        cache = self._cache
        key = cache.key_for(request) if cache is not None else None
        if (
            cache is not None
            and key is not None
            and request.cache in ("default", "no-store", "only")
        ):
            hit = await cache.lookup(key)
            if hit is not None:
                hit.latency_s = time.perf_counter() - started
                hit.alias = request.alias
                self._finish(request, hit)
                if hit.content:
                    yield hit.content
                yield hit
                return
        if request.cache == "only":
            raise CacheMissError(
                f"no cache tier holds an answer for this '{request.alias}' request — "
                f'call again without cache="only"'
            )
        final: ChatResponse | None = None
        errors: list[tuple[str, BaseException]] = []
        candidates = self._candidates(request)
        for index, alias in enumerate(candidates):
            attempt_request = self._request_for(request, alias)
            emitted = False
            try:
                async for item in self._stream_one(attempt_request):
                    if isinstance(item, ChatResponse):
                        final = item
                    else:
                        emitted = True
                        yield item
                break
            except HerdError as exc:
                errors.append((alias, exc))
                if emitted or not exc.fallback_ok or index == len(candidates) - 1:
                    request.context["final"] = True
                    if self._has.get("on_error"):
                        self.hook.on_error(request=request, error=exc, herd=self)
                    if len(errors) == 1 or emitted:
                        raise
                    raise AllModelsFailedError(request.alias, errors) from exc
        assert final is not None
        if candidates[0] != final.alias and final.alias:
            final.fallback_from = request.alias
        final.latency_s = time.perf_counter() - started
        storing = request.cache in ("default", "no-cache")
        if cache is not None and key is not None and storing and cache.storable(final):
            await cache.store(key, final, request.cache_ttl)
        self._finish(request, final)
        yield final

    async def _stream_one(self, request: ChatRequest) -> AsyncIterator[str | ChatResponse]:
        herd_cfg = self.config.herd
        model = self.get_model(request.alias)
        retries = model.spec.retries if model.spec.retries is not None else herd_cfg.retries
        timeout = request.timeout if request.timeout is not None else herd_cfg.timeout
        attempt = 0
        while True:
            if self._has.get("before_call"):
                answered = self.hook.before_call(request=request, herd=self)
                if answered is not None:
                    yield answered.content
                    yield answered
                    return
            emitted = False
            try:
                # the timeout bounds the wait for each chunk, not the whole stream
                iterator = model.stream(request).__aiter__()
                while True:
                    async with asyncio.timeout(timeout):
                        try:
                            item = await iterator.__anext__()
                        except StopAsyncIteration:
                            break
                    if isinstance(item, ChatResponse):
                        item.attempts = attempt + 1
                        if not item.alias:
                            item.alias = request.alias
                    else:
                        emitted = True
                    yield item
                return
            except TimeoutError:
                error: HerdError = CallTimeoutError(
                    f"'{request.alias}' ({request.provider}) sent nothing for {timeout:g}s — "
                    f"pass a larger timeout= or set [models.{request.alias}] timeout"
                )
            except HerdError as exc:
                error = exc
            if self._has.get("on_error"):
                self.hook.on_error(request=request, error=error, herd=self)
            delay = None
            if not emitted and attempt < retries:
                delay = retry_delay(error, attempt, herd_cfg.backoff_base, herd_cfg.backoff_max)
            if delay is None:
                raise error
            self.emit(Metric("herd.retries", 1, attributes=_attrs(request, type(error).__name__)))
            attempt += 1
            await anyio.sleep(delay)


def _attrs(request: ChatRequest, error_type: str | None = None) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.provider.name": request.provider,
        "gen_ai.request.model": request.model,
        "herd.alias": request.alias,
    }
    if request.tenant:
        attrs["herd.tenant"] = request.tenant
    if error_type:
        attrs["error.type"] = error_type
    return attrs
