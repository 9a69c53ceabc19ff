"""`optimizer`: place local models in GPU/RAM memory, and `herd plan MODEL` to explain it.

For each local alias (llamacpp GGUF files, Ollama models) it estimates memory from
the model's metadata (gguf_estimate), reads free memory (device_memory: NVML per
GPU, else RAM), and chooses GPU layers, context size, KV cache type, tensor split
and mmap/mlock (placement). The choice is written into `request.options` in
`before_call` — only keys the user did not set, in the call or in `[models.x]` —
and llama.cpp reads them when it loads the model.

Default `enabled = "auto"`: on when NVML sees a GPU or a `memory_budget_gb` is
set; on a CPU-only machine without a budget the embedded model needs no placing,
so no per-call hook is registered (bench/overhead.py stays untouched).
With `memory_budget_gb`, loading a model first evicts the least recently used idle
local models until the new one fits — unless the `residency` plugin is active (its
`residency-manager` is registered), which owns eviction then.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from modelherd import hookimpl
from modelherd.errors import ConfigError
from modelherd.lazy_model import LazyModel
from modelherd.plugins.resources.optimizer import RUNTIME
from modelherd.stash import StashKey
from modelherd.types import ChatRequest, ChatResponse, ModelSpec
from pydantic import ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import click
    from modelherd.kernel import Herd
    from modelherd.plugins.resources.optimizer.placement import Placement

#: why the optimizer placed this call as it did (n_gpu_layers, context …), for `herd plan`
PLACEMENT_REASON = StashKey[str]()
#: the option keys the optimizer added to this attempt (taken back out on failure)
_PLACED_KEYS = StashKey[list[str]]()
#: the alias a call asked for when a better-fitting quantization variant served it
VARIANT_OF = StashKey[str]()

log = logging.getLogger("modelherd.optimizer")

LOCAL_PROVIDERS = ("llamacpp", "ollama")
GiB = 1024**3
KvType = Literal["f16", "q8_0", "q4_0"]
_KV_DEFAULT: tuple[KvType, ...] = ("f16", "q8_0", "q4_0")


class OptimizerSettings(LazyModel):
    """`[plugins.optimizer]` in plugins.toml."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | Literal["auto"] = "auto"
    #: context to aim for when the alias sets none (capped at the model's own)
    n_ctx: int = Field(2048, ge=64)
    #: never cut the context below this to make a model fit
    min_ctx: int = Field(512, ge=64)
    kv_types: list[KvType] = Field(default_factory=lambda: list(_KV_DEFAULT))
    ram_reserve_gb: float = Field(2.0, ge=0)
    gpu_reserve_mb: int = Field(256, ge=0)
    mlock: bool = False
    #: total memory local models may hold; loading past it evicts idle LRU models
    memory_budget_gb: float | None = Field(None, gt=0)
    #: alias -> aliases of the same model in other quantizations, best first
    variants: dict[str, list[str]] = Field(default_factory=dict)


def load_settings(herd: Herd) -> OptimizerSettings:
    return herd.plugin_config("optimizer", OptimizerSettings, "docs/resources.md")


def gguf_path(spec: ModelSpec) -> Path | None:
    """The GGUF file a llamacpp alias loads (same rules as the provider)."""
    from modelherd.plugins.providers.llamacpp import LlamaCppSettings, resolve_path

    try:
        settings = LlamaCppSettings.model_validate(spec.settings)
    except ValidationError:
        return None
    return resolve_path(spec, settings)


def ollama_facts(spec: ModelSpec, timeout: float = 3.0) -> Any:
    """Ask the Ollama server about a model (`/api/show`)."""
    import httpx
    from modelherd.plugins.providers.ollama import normalize_host
    from modelherd.plugins.resources.gguf_estimate import facts_from_ollama_show

    host = normalize_host(spec.settings.get("host") or os.environ.get("OLLAMA_HOST"))
    reply = httpx.post(f"{host}/api/show", json={"model": spec.model}, timeout=timeout)
    reply.raise_for_status()
    return facts_from_ollama_show(spec.model, reply.json())


def plan_for(herd: Herd, alias: str, settings: OptimizerSettings | None = None) -> Placement:
    """The placement for one alias, from its model file (or Ollama) and free memory now."""
    from modelherd.plugins.resources.device_memory import read_devices
    from modelherd.plugins.resources.gguf_estimate import read_facts
    from modelherd.plugins.resources.optimizer.placement import place

    settings = settings or load_settings(herd)
    spec = herd.resolve(alias)
    if spec.provider == "llamacpp":
        path = gguf_path(spec)
        if path is None or not path.is_file():
            raise ConfigError(
                f"[models.{alias}] has no GGUF file to plan for ({path or 'no path'}) — "
                f'set path = "/path/to/model.gguf"'
            )
        facts = read_facts(path)
    elif spec.provider == "ollama":
        try:
            facts = ollama_facts(spec)
        except Exception as exc:
            raise ConfigError(
                f"cannot ask Ollama about '{spec.model}' ({type(exc).__name__}: {exc}) — "
                f"start `ollama serve` and `ollama pull {spec.model}`"
            ) from None
    else:
        raise ConfigError(
            f"'{alias}' is served by '{spec.provider}', a remote provider: there is no local "
            f"memory to plan — `herd plan` works for {', '.join(LOCAL_PROVIDERS)} aliases"
        )
    gpus, ram, why = read_devices(int(settings.ram_reserve_gb * GiB))
    n_ctx = spec.settings.get("n_ctx") or spec.options.get("n_ctx") or spec.options.get("num_ctx")
    n_ctx = int(n_ctx or settings.n_ctx)
    return place(
        facts,
        gpus,
        ram,
        n_ctx=n_ctx,
        min_ctx=settings.min_ctx,
        kv_types=tuple(settings.kv_types),
        gpu_reserve=settings.gpu_reserve_mb * 1024**2,
        mlock=settings.mlock,
        gpu_note=why,
        slots=llamacpp_slots(spec, facts, n_ctx) if spec.provider == "llamacpp" else 1,
    )


def llamacpp_slots(spec: ModelSpec, facts: Any, n_ctx: int) -> int:
    """The slots the provider will load this alias with (its `parallel`, else the default
    from free memory): each holds n_ctx of KV, so the plan counts KV x slots. Ollama
    sizes its own parallelism (OLLAMA_NUM_PARALLEL): its plan counts one."""
    from modelherd.plugins.providers.llamacpp.preflight import KV_TYPE_NAMES, free_memory
    from modelherd.plugins.providers.llamacpp.settings import LlamaCppSettings, planned_slots
    from modelherd.plugins.resources.gguf_estimate import kv_bytes_per_token

    try:
        settings = LlamaCppSettings.model_validate(spec.settings)
    except ValidationError:
        return 1
    kv_type = KV_TYPE_NAMES.get(settings.type_k if settings.type_k is not None else 1, "f16")
    kv_slot = int(kv_bytes_per_token(facts, kv_type) * n_ctx)
    return planned_slots(settings, kv_slot, free_memory())


class Optimizer:
    """The per-call half, registered from `startup` only when the optimizer is on."""

    def __init__(self, herd: Herd, settings: OptimizerSettings, own_eviction: bool = True) -> None:
        self.herd = herd
        self.settings = settings
        self.plans: dict[str, Placement | None] = {}
        self.own_eviction = own_eviction and settings.memory_budget_gb is not None
        self.last_used: dict[str, float] = {}
        self.in_flight: dict[str, int] = {}
        #: load keys the user set in [models.<alias>]: never overridden
        self.user_keys: dict[str, set[str]] = {}
        #: alias -> the variant (another alias) that is the best quality that fits
        self.variant_choice: dict[str, str] = {}

    def plan(self, alias: str) -> Placement | None:
        if alias not in self.plans:
            try:
                self.plans[alias] = plan_for(self.herd, alias, self.settings)
            except Exception as exc:  # a plan is advice: never fail the call over it
                log.warning("optimizer: no placement for '%s': %s", alias, exc)
                self.plans[alias] = None
        return self.plans[alias]

    async def warm(self) -> None:
        """Plan every local alias in a worker thread, off the first call's path."""
        import anyio

        for alias, table in self.herd.config.models.items():
            if table.get("provider") in LOCAL_PROVIDERS:
                await anyio.to_thread.run_sync(self.plan, alias)
        self.choose_variants()

    def choose_variants(self) -> None:
        """For each alias with `variants`, remember the best quality that fits now."""
        from modelherd.plugins.resources.optimizer.placement import best_variant

        for alias, others in self.settings.variants.items():
            plans = [(name, self.plan(name)) for name in (alias, *others)]
            chosen = best_variant([(n, p) for n, p in plans if p is not None])
            if chosen is not None and chosen[0] != alias:
                self.variant_choice[alias] = chosen[0]
                log.info(
                    "optimizer: '%s' is served by its variant '%s' (%s)",
                    alias,
                    chosen[0],
                    chosen[1].reason,
                )

    @hookimpl
    def before_call(self, request: ChatRequest, herd: Herd) -> ChatResponse | None:
        if request.provider not in LOCAL_PROVIDERS:
            return None
        if request.provider == "ollama" and request.alias not in self.plans:
            return None  # asking Ollama is network I/O: only `warm` (startup) does it
        placement = self.plan(request.alias)
        if placement is None:
            return None
        wanted = (
            placement.llamacpp_options()
            if request.provider == "llamacpp"
            else placement.ollama_options()
        )
        user_set = self.user_keys.get(request.alias)
        if user_set is None:
            user_set = self.user_keys[request.alias] = set(herd.resolve(request.alias).settings)
        added = []
        for key, value in wanted.items():
            if key not in request.options and key not in user_set:
                request.options[key] = value
                added.append(key)
        request.stash[PLACEMENT_REASON] = placement.reason
        request.stash[_PLACED_KEYS] = added
        return None

    @hookimpl
    def on_error(self, request: ChatRequest, error: BaseException, herd: Herd) -> None:
        # the kernel copies the failed attempt's options into the fallback's request:
        # take the placement back out, so a cloud fallback never sees n_gpu_layers
        for key in request.stash.pop(_PLACED_KEYS, []):
            request.options.pop(key, None)

    @hookimpl
    def acquire_admission(self, request: ChatRequest, herd: Herd) -> Any:
        variant = self.variant_choice.get(request.alias)
        if variant is not None:  # the best quantization that fits serves this call
            spec = herd.resolve(variant)
            request.stash[VARIANT_OF] = request.alias
            request.alias, request.provider, request.model = variant, spec.provider, spec.model
        if not self.own_eviction or request.provider not in LOCAL_PROVIDERS:
            return None
        if herd.pm.get_plugin("residency-manager") is not None:
            return None  # the residency plugin is active: it owns eviction
        return self._make_room(request.alias)

    @asynccontextmanager
    async def _make_room(self, alias: str) -> AsyncIterator[None]:
        self.in_flight[alias] = self.in_flight.get(alias, 0) + 1
        try:
            if not _is_loaded(self.herd, alias):
                await self.evict_for(alias)
            yield
        finally:
            self.in_flight[alias] -= 1
            self.last_used[alias] = time.monotonic()

    def held_bytes(self, exclude: str) -> dict[str, int]:
        held = {}
        for name in self.herd.loaded_models():
            if name != exclude and _is_loaded(self.herd, name):
                plan = self.plan(name)
                if plan is not None:
                    held[name] = plan.estimate.total
        return held

    async def evict_for(self, alias: str) -> list[str]:
        """Unload least recently used idle local models until `alias` fits the budget."""
        assert self.settings.memory_budget_gb is not None
        budget = int(self.settings.memory_budget_gb * GiB)
        plan = self.plan(alias)
        need = plan.estimate.total if plan else 0
        held = self.held_bytes(alias)
        evicted: list[str] = []
        for name in sorted(held, key=lambda n: self.last_used.get(n, 0.0)):
            if sum(held.values()) + need <= budget:
                break
            if self.in_flight.get(name, 0):
                continue  # busy: never pull a model from under a running call
            if await unload_local(self.herd, name):
                evicted.append(name)
                log.info("optimizer: unloaded idle '%s' to make room for '%s'", name, alias)
            held.pop(name)
        return evicted


async def unload_local(herd: Herd, alias: str) -> bool:
    """Free a local model: Ollama's server copy first (keep_alive 0), then the Model."""
    model = herd.loaded_models().get(alias)
    unload = getattr(model, "unload", None)
    if unload is not None:
        try:
            await unload()
        except Exception as exc:  # best effort: the server's own keep_alive still applies
            log.warning("could not unload '%s' from its server: %s", alias, exc)
    return await herd.unload_model(alias)


def _is_loaded(herd: Herd, alias: str) -> bool:
    model = herd.loaded_models().get(alias)
    if model is None:
        return False
    # llamacpp builds the Model object before loading weights; `loaded` says which
    return getattr(model, "loaded", True) is not None


def _gpu_present() -> bool:
    from modelherd.plugins.resources.device_memory import read_gpus

    return bool(read_gpus()[0])


def start(herd: Herd) -> Awaitable[None] | None:
    """The plugin's startup: register the per-call half only when the optimizer is on."""
    settings = load_settings(herd)
    has_local = any(t.get("provider") in LOCAL_PROVIDERS for t in herd.config.models.values())
    enabled = settings.enabled
    if enabled == "auto":
        enabled = has_local and (settings.memory_budget_gb is not None or _gpu_present())
    if not enabled:
        return None
    optimizer = Optimizer(herd, settings)
    herd.register_plugin(optimizer, name="optimizer-calls")
    herd.stash[RUNTIME] = optimizer  # for shutdown
    return optimizer.warm()


def stop(herd: Herd) -> None:
    optimizer = herd.stash.pop(RUNTIME, None)
    if optimizer is not None:
        herd.unregister_plugin(optimizer)


def make_plan_command() -> click.Command:
    import click

    @click.command("plan")
    @click.argument("model", required=False)
    @click.option("--json", "as_json", is_flag=True, help="print the plan as JSON")
    @click.option("--config", "config_path", default=None, help="plugins.toml to read")
    @click.option("--n-ctx", type=int, default=None, help="context size to aim for")
    @click.pass_context
    def plan_command(
        ctx: click.Context,
        model: str | None,
        as_json: bool,
        config_path: str | None,
        n_ctx: int | None,
    ) -> None:
        """Show where MODEL (an alias) would go: weights, KV, buffers, free memory, fit."""
        import json

        from modelherd.kernel import Herd
        from modelherd.plugins.resources.optimizer.placement import best_variant

        root = ctx.find_root().params or {}
        config_path = config_path or root.get("config") or root.get("config_path")
        as_json = as_json or bool(root.get("json") or root.get("as_json"))
        try:
            herd = Herd(config_path=config_path, profile=root.get("profile"))
            settings = load_settings(herd)
            if n_ctx:
                settings = settings.model_copy(update={"n_ctx": n_ctx})
            alias = model or herd.config.herd.default_model
            aliases = [alias, *settings.variants.get(alias, [])]
            plans = [(name, plan_for(herd, name, settings)) for name in aliases]
        except (ConfigError, ValueError) as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
            return
        chosen = best_variant(plans)
        if as_json:
            out = [
                {"alias": name, **p.as_dict(), "chosen": chosen is not None and chosen[0] == name}
                for name, p in plans
            ]
            click.echo(json.dumps(out[0] if len(out) == 1 else out, indent=2))
            return
        _print_plans(plans, chosen[0] if chosen else None)

    return plan_command


def _print_plans(plans: list[tuple[str, Placement]], chosen: str | None) -> None:
    from modelherd.plugins.resources.optimizer.placement import human
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for alias, p in plans:
        est = p.estimate
        title = f"{alias}: {p.facts.name} ({p.facts.quantization}, {p.facts.n_layers} layers)"
        if len(plans) > 1:
            title += "  ← best fitting variant" if alias == chosen else ""
        table = Table(title=title, show_header=True)
        table.add_column("item")
        table.add_column("value", justify="right")
        table.add_row("weights", human(est.weights))
        slots = f" x {p.slots} slots" if p.slots > 1 else ""
        table.add_row(f"KV cache ({p.kv_type}, ctx {p.n_ctx}{slots})", human(est.kv_cache))
        table.add_row("compute buffers", human(est.compute))
        table.add_row("overhead", human(est.overhead))
        table.add_row("total", human(est.total))
        table.add_row("free GPU", human(p.gpu_free) if p.devices or p.gpu_free else "no GPU")
        table.add_row("free RAM", human(p.cpu_free))
        table.add_row("layers on GPU", f"{p.gpu_layers}/{p.facts.n_layers}")
        if p.tensor_split:
            table.add_row("tensor_split", ", ".join(f"{x:g}" for x in p.tensor_split))
        table.add_row("mmap / mlock", f"{p.use_mmap} / {p.use_mlock}")
        table.add_row("fits", "[green]yes[/]" if p.fits else "[red]no[/]")
        console.print(table)
        console.print(p.reason)
