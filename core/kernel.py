"""Herd: the plugin manager, the configuration and the public calls.

`chat`, `stream` (and what is built on them) resolve the alias, build a ChatRequest
and hand it to core/pipeline.py, the one road every call takes. Hooks that no plugin
implements are skipped without a call: the kernel's own cost per call is a product
feature (bench/overhead.py).
"""

from __future__ import annotations

import asyncio
import difflib
import operator
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy
from pydantic import BaseModel

from . import loader, pipeline
from .agent import Agent
from .cache import CacheTier, TieredCache
from .coalesce import Coalescer
from .config import HerdConfig, load_config, load_env, validate_table
from .errors import (
    BadRequestError,
    ConfigError,
    HerdError,
    PluginLoadError,
    UnknownModelError,
)
from .nesting import too_deep
from .pipeline import Validator
from .provider import Model
from .stash import Stash
from .tool_stream import stream_events
from .tools import normalize_tool_options
from .types import ChatRequest, ChatResponse, EmbedResponse, Message, Metric, ModelSpec, trusted

if TYPE_CHECKING:
    from pluggy import HookImpl

    from .events import HerdEvent
    from .tool_loop import ToolRun

hookimpl = pluggy.HookimplMarker("modelherd")

MessagesIn = str | Sequence[Message | dict[str, Any]]
_S = TypeVar("_S", bound=BaseModel)
_CACHE_MODES = frozenset({"default", "no-store", "no-cache", "only"})


def _caller_stash(options: dict[str, Any], timeout: float | None) -> Stash:
    stash = Stash()
    stash[pipeline.CALLER] = (options, timeout)
    return stash


class _CoreDefaults:
    """The kernel's own default implementations, last in every band."""

    @hookimpl(trylast=True)
    def provide_model(self, spec: ModelSpec, herd: Herd) -> Model | None:
        cls = herd.providers.get(spec.provider)
        return cls(spec, herd) if cls is not None else None

    @hookimpl
    def register_settings(self, register: Callable[..., None]) -> None:
        from .cache import CachePolicy

        register("cache", CachePolicy, "docs/cache.md")


def _arguments_getter(argnames: Sequence[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """The positional arguments of one hook implementation, picked from the call's
    keyword arguments: `itemgetter` does it in C (~3x a list comprehension)."""
    if len(argnames) == 1:
        only = argnames[0]
        return lambda kwargs: (kwargs[only],)
    if not argnames:
        return lambda kwargs: ()
    return operator.itemgetter(*argnames)


#: a hook's implementations ready to call: (function, its arguments from the call's
#: kwargs) in pluggy's order; None when pluggy itself must run the hook (a wrapper)
_Prepared = list[tuple[Callable[..., Any], Callable[[dict[str, Any]], tuple[Any, ...]]]] | None


def _prepared(impls: Sequence[HookImpl]) -> _Prepared:
    """A hook's implementations, ready to call in pluggy's order (last registered first,
    tryfirst/trylast honoured: `get_hookimpls` is sorted the other way round), about 2 µs
    less than a pluggy hook call. None when one is a wrapper: then pluggy's own machinery
    must run it."""
    if any(impl.hookwrapper or impl.wrapper for impl in impls):
        return None
    return [(impl.function, _arguments_getter(impl.argnames)) for impl in reversed(impls)]


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
        self._after_call: list[
            tuple[Callable[..., Any], Callable[[dict[str, Any]], tuple[Any, ...]], str]
        ] = []
        self._before_call: _Prepared = None
        self._admission: _Prepared = None
        #: typed per-Herd state for plugins (their runtime objects, client pools):
        #: `herd.stash[KEY]` with a module-level `KEY = StashKey[T]()`
        self.stash = Stash()

    # ---- plugins -------------------------------------------------------------

    @property
    def pm(self) -> pluggy.PluginManager:
        """The plugin manager, loaded lazily on first use."""
        if self._pm is None:
            pm = loader.new_plugin_manager()
            pm.register(_CoreDefaults(), name="core")
            self._pm = pm
            try:
                if self._load_entry_points:
                    self.plugin_records = loader.load_entry_point_plugins(
                        pm,
                        self.config.disabled_plugins,
                        self.config.herd.allow_plugins,
                        self.strict,
                        source=self.config.source,
                    )
                for index, plugin in enumerate(self._extra_plugins):
                    name = getattr(plugin, "__name__", f"{type(plugin).__name__}-{index}")
                    self.plugin_records.append(loader.register_object(pm, plugin, name))
                # every [plugins.x] table is checked now, on every command (core/loader.py)
                schemas = loader.collect_settings(pm, self.plugin_records, self.strict)
                loader.check_plugin_tables(
                    self.config, schemas, self.plugin_records, self._load_entry_points
                )
            except ConfigError:
                self._pm = None  # the next use reports it again instead of half-loading
                self.plugin_records = []
                raise
            self._refresh_hook_flags()
        return self._pm

    @property
    def plugins_loaded(self) -> bool:
        """Whether the plugin manager exists yet (asking `pm` would load the plugins)."""
        return self._pm is not None

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

    def call_each(
        self,
        hook_name: str,
        *,
        propagate: type[BaseException] | tuple[type[BaseException], ...] = ConfigError,
        **kwargs: Any,
    ) -> list[Any]:
        """Call every implementation of a registration/lifecycle hook on its own.

        pluggy aborts a hook call at the first raising implementation; for these
        hooks one broken plugin must not take the others down, so each is called
        separately and a failure is recorded (shown by `herd plugins` / `herd doctor`)
        or, with strict=True, raised. A `propagate` error (by default ConfigError: the
        user's config is wrong, the plugin is not broken) goes to the caller — a bad
        setting is an error, never a plugin quietly switched off.
        """
        results: list[Any] = []
        caller = getattr(self.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):  # pluggy's order: last registered first
            try:
                result = impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
            except propagate:
                raise
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
                record.failed_hooks[hook_name] = message
                return
        self.plugin_records.append(
            loader.PluginRecord(
                name=plugin_name,
                module="?",
                status="failed",
                error=message,
                failed_hooks={hook_name: message},
            )
        )

    def unregister_plugin(self, plugin: Any) -> None:
        self.pm.unregister(plugin)
        self._refresh_hook_flags()

    def _refresh_hook_flags(self) -> None:
        assert self._pm is not None
        self._has = {
            name: bool(getattr(self._pm.hook, name).get_hookimpls())
            for name in (
                "acquire_admission",
                "before_call",
                "after_call",
                "on_error",
                "on_metric",
                "track_event",
            )
        }
        # after_call runs on every call and must isolate a broken plugin: keep each
        # implementation's function and argument names ready, as pluggy's own
        # _multicall does, instead of rebuilding them per call (bench/overhead.py)
        self._after_call = [
            (impl.function, _arguments_getter(impl.argnames), impl.plugin_name)
            for impl in reversed(self._pm.hook.after_call.get_hookimpls())
            if not (impl.hookwrapper or impl.wrapper)
        ]
        # before_call runs on every attempt too: the same prepared list, called in pluggy's
        # order with its firstresult rule (~2 µs less than a pluggy hook call); a wrapper
        # needs pluggy's own machinery, so then it is None and pluggy calls the hook
        self._before_call = _prepared(self._pm.hook.before_call.get_hookimpls())
        # acquire_admission too: every call asks it, and most answers are None (a cloud
        # model has no residency gate, no quota is configured)
        self._admission = _prepared(self._pm.hook.acquire_admission.get_hookimpls())

    def call_before_call(self, request: ChatRequest) -> ChatResponse | None:
        """`before_call` (firstresult): the first implementation's answer, or None."""
        impls = self._before_call
        if impls is None:
            answered: ChatResponse | None = self.hook.before_call(request=request, herd=self)
            return answered
        kwargs = {"request": request, "herd": self}
        for function, arguments in impls:
            answered = function(*arguments(kwargs))
            if answered is not None:
                return answered
        return None

    def call_admission(self, request: ChatRequest) -> list[Any]:
        """`acquire_admission`: the gates (async context managers) the call must enter,
        in pluggy's order; an empty list when every implementation answered None."""
        impls = self._admission
        if impls is None:
            gates: list[Any] = self.hook.acquire_admission(request=request, herd=self)
            return [gate for gate in gates if gate is not None]
        kwargs = {"request": request, "herd": self}
        found = []
        for function, arguments in impls:
            gate = function(*arguments(kwargs))
            if gate is not None:
                found.append(gate)
        return found

    def call_observers(self, kwargs: dict[str, Any]) -> None:
        """Every `after_call` implementation on its own, like `call_each` but cheaper:
        a plugin bug is recorded (fatal under strict), a HerdError is deliberate and
        goes to the caller."""
        for function, arguments, plugin_name in self._after_call:
            try:
                function(*arguments(kwargs))
            except HerdError:
                raise
            except Exception as exc:
                if self.strict:
                    raise PluginLoadError(
                        f"plugin '{plugin_name}' failed in after_call: "
                        f"{type(exc).__name__}: {exc} — fix or disable it"
                    ) from exc
                self._record_hook_failure("after_call", plugin_name, exc)

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

    def track(self, event: HerdEvent) -> None:
        """Send one event (a tool run, an embeddings batch) to `track_event` (free when
        nobody listens)."""
        if self._has.get("track_event"):
            self.hook.track_event(event=event, herd=self)

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
        if "tools" in options or "tool_choice" in options:
            options = normalize_tool_options(options)  # once, at the edge (docs/tools.md)
        merged = {**spec.options, **options} if spec.options else options
        for name in ("response_format", "tools"):  # both reach recursive code downstream
            if name in merged and (why := too_deep(merged[name])):
                raise BadRequestError(f"{name} {why} — flatten it")
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
                "stash": _caller_stash(options, timeout) if spec.fallbacks else Stash(),
            },
        )

    async def chat(
        self,
        model: str | None = None,
        messages: MessagesIn = "",
        *,
        validate: Validator | None = None,
        output_type: Any = None,
        output_retries: int = 0,
        **kwargs: Any,
    ) -> ChatResponse:
        """Call a model through the whole pipeline; return its ChatResponse.

        Keyword arguments: tenant, agent, cache ("default" | "no-store" | "no-cache" |
        "only"), cache_ttl, timeout (seconds per attempt), priority, and any model
        option (temperature, max_tokens, seed, stop, response_format …).
        `validate(response) -> bool`: an answer that fails it is returned but never
        cached, and counts against the model's quality KPI. `tools=` / `tool_choice=`:
        see docs/tools.md. `output_type=` (a pydantic model or JSON schema): the answer
        is validated into `response.parsed`, asked again up to `output_retries` times.
        """
        if output_type is not None:
            from .structured import chat_typed

            return await chat_typed(
                self, model, messages, output_type, output_retries, validate, kwargs
            )
        request = self.build_request(model, messages, **kwargs)
        return await pipeline.chat(self, request, validate)

    async def run_tools(
        self,
        model: str | None,
        messages: MessagesIn,
        *,
        tools: Sequence[Any],
        max_steps: int = 8,
        **kwargs: Any,
    ) -> ToolRun:
        """Call the model, run the tools it chose, send the results back, repeat until
        it answers without a call (at most `max_steps` calls). See docs/tools.md."""
        from .tool_loop import run_tools

        return await run_tools(self, model, messages, tools=tools, max_steps=max_steps, **kwargs)

    async def embed(
        self, model: str | None, texts: str | Sequence[str], **kwargs: Any
    ) -> EmbedResponse:
        """Vectors for `texts` (one per text, in order): batched, cached per text,
        coalesced, admitted and traced like chat calls. See docs/tools.md."""
        from .embed import embed

        return await embed(self, model, texts, **kwargs)

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
        """Send an already-built request down the pipeline (see `build_request`)."""
        return await pipeline.chat(self, request, validate)

    async def stream(
        self,
        model: str | None = None,
        messages: MessagesIn = "",
        *,
        events: bool = False,
        **kwargs: Any,
    ) -> AsyncIterator[Any]:
        """Yield text chunks as they arrive, then the final ChatResponse.

        Retries and fallbacks apply until the first chunk has been yielded; after
        that an error reaches the caller. A cached answer is replayed as one chunk.
        With `events=True`, yield typed events instead of bare text (`TextDelta`,
        `ReasoningDelta`, `KeepAlive`, `ToolCallStart/Delta/End`), then the response.
        `timeout` is an idle timeout (any event from the server restarts it, reasoning
        and pings included); `deadline=` seconds bounds the whole stream.
        """
        deadline = kwargs.pop("deadline", None)
        request = self.build_request(model, messages, stream=True, **kwargs)
        if deadline is not None:
            if not isinstance(deadline, int | float) or deadline <= 0:
                raise ConfigError(f"deadline={deadline!r} is not a number of seconds > 0")
            request.stash[pipeline.DEADLINE] = float(deadline)
        if events:
            async for event in stream_events(pipeline.stream(self, request), request):
                yield event
            return
        async for item in pipeline.stream(self, request):
            if type(item) is str or isinstance(item, ChatResponse):
                yield item
