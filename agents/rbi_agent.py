"""`rbi`: research an idea -> write backtesting.py code -> run it, debug it, report.

1. Research: idea text (or a file) -> a structured strategy spec.
2. Backtest: a model writes backtesting.py code for the spec.
3. Run: the code runs in a bubblewrap jail (agents/jail.py, agents/sandbox.py) on the
   sample candles; on error the traceback goes to a debug model, up to `max_rounds`
   rounds. Without a jail nothing runs unless the caller passes `unsafe_no_jail=True`
   (`herd run rbi --unsafe-no-jail`); a config file cannot switch the jail off.
Output: the final code, the stats (return, Sharpe, max drawdown, trades — recomputed
by herd from the trades, agents/rbi_stats.py) as JSON, and every round. Every text
sent to a model or saved is scrubbed of secrets (agents/redaction.py). Ideas are
de-duplicated by a hash of their normalised text.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
import time
from pathlib import Path
from typing import Any, Literal

import anyio
from modelherd import Agent, AgentSettings
from modelherd.errors import ConfigError, HerdError, MissingDependencyError
from modelherd.lazy_model import LazyModel
from pydantic import Field

from . import jail, storage
from .answers import json_object
from .caveats import model_note
from .market_data import fetch_candles
from .redaction import scrub, scrub_tree
from .sandbox import (
    JailUnavailableError,
    Limits,
    isolation_note,
    network_namespace_available,
    refusal,
    run_backtest,
)

SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 60},
        "entry": {"type": "string", "maxLength": 240},
        "exit": {"type": "string", "maxLength": 240},
        "indicators": {
            "type": "array",
            "items": {"type": "string", "maxLength": 40},
            "maxItems": 5,
        },
    },
    "required": ["name", "entry", "exit", "indicators"],
}

#: the strategy the code model is shown as an example; the tests use it as the known-good
#: answer, which also proves that the example itself runs in the harness
EXAMPLE_STRATEGY = """from backtesting import Strategy
from backtesting.lib import crossover
from backtesting.test import SMA

class SmaCross(Strategy):
    def init(self):
        self.fast = self.I(SMA, self.data.Close, 10)
        self.slow = self.I(SMA, self.data.Close, 30)

    def next(self):
        if crossover(self.fast, self.slow):
            self.buy()
        elif crossover(self.slow, self.fast):
            self.position.close()
"""

CODE_RULES = (
    """Write Python code for the backtesting.py library (package `backtesting`).
Rules:
- Define exactly one class that subclasses backtesting.Strategy, with init() and next().
- Price data: self.data.Open, .High, .Low, .Close, .Volume (numpy arrays).
- Indicators: self.I(func, self.data.Close, n); helpers: from backtesting.lib import crossover;
  from backtesting.test import SMA.
- Orders: self.buy(), self.sell(), self.position.close().
- Do not read files, fetch data, plot, or call Backtest: the harness does that.
Reply with only the code in one ```python block.

Example of the shape (a different strategy):
```python
"""
    + EXAMPLE_STRATEGY
    + "```"
)


class RBISettings(AgentSettings):
    """`[agents.rbi]` in plugins.toml."""

    research_model: str = "local"
    code_model: str = "local"
    debug_model: str = "local"
    #: debug rounds after the first run (total runs = 1 + max_rounds)
    max_rounds: int = Field(default=3, ge=0, le=20)
    symbol: str = "BTC"
    timeframe: str = "1d"
    bars: int = Field(default=180, ge=30)
    cash: float = Field(default=1_000_000.0, gt=0)
    commission: float = Field(default=0.001, ge=0)
    timeout_s: float = Field(default=60.0, gt=0)
    cpu_s: int = Field(default=60, ge=1)
    memory_mb: int = Field(default=2048, ge=256)
    #: processes the jail may hold at once (pids cgroup, or RLIMIT_NPROC)
    processes: int = Field(default=32, ge=4, le=4096)
    #: size of the jail's only writable folder (a tmpfs)
    scratch_mb: int = Field(default=64, ge=1, le=4096)
    #: with --unsafe-no-jail: refuse unless `unshare -rn` gives an empty network
    require_network_namespace: bool = False
    spec_max_tokens: int = Field(default=256, ge=16)
    code_max_tokens: int = Field(default=768, ge=32)
    model_timeout: float = Field(default=180.0, gt=0)
    data_path: str | None = None
    data_dir: str | None = None


class Round(LazyModel):
    round: int
    step: Literal["code", "debug"]
    model: str
    ok: bool
    error: str | None = None
    stats: dict[str, Any] | None = None
    duration_s: float = 0.0
    code_file: str = ""


class RBIResult(LazyModel):
    idea_hash: str
    idea: str
    status: Literal["ok", "failed", "duplicate"]
    reason: str = ""
    spec: dict[str, Any] | None = None
    spec_error: str | None = None
    code: str = ""
    stats: dict[str, Any] | None = None
    rounds: list[Round] = Field(default_factory=list)
    folder: str
    sandbox: str = ""
    note: str = ""
    created_at: str = Field(default_factory=storage.utc_now)


_FENCED = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_code(text: str) -> str:
    """The code inside the first ```python fence, else the text if it looks like code."""
    match = _FENCED.search(text)
    if match and match.group(1).strip():
        return match.group(1).strip() + "\n"
    if re.search(r"^\s*(class|def|from|import)\s", text, re.MULTILINE):
        return text.strip() + "\n"
    return ""


def idea_hash(text: str) -> str:
    normalised = " ".join(text.lower().split())
    return hashlib.blake2b(normalised.encode(), digest_size=8).hexdigest()


def read_idea(idea: str) -> str:
    """The idea text: the argument itself, or the contents of the file it names."""
    path = Path(idea).expanduser()
    if len(idea) < 4096 and "\n" not in idea and path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")[:20_000]
        if not text.strip():
            raise ConfigError(f"{path} is empty — write the strategy idea in it")
        return text
    if not idea.strip():
        raise ConfigError('rbi needs an idea — e.g. herd run rbi "buy when RSI < 30, sell > 70"')
    return idea


class RBIAgent(Agent):
    name = "rbi"
    description = "research an idea -> backtesting.py code -> run in a sandbox, debug on error"
    Settings = RBISettings
    settings: RBISettings

    def folder(self, digest: str) -> Path:
        return storage.data_dir(self.settings.data_dir) / "rbi" / digest

    async def _ask(
        self, alias: str, prompt: str, max_tokens: int, schema: dict[str, Any] | None = None
    ) -> str:
        s = self.settings
        options: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0.0}
        if schema is not None:
            try:
                if self.herd.get_model(alias).supports_schema:
                    options["response_format"] = {"type": "json_schema", "schema": schema}
            except HerdError:
                pass
        with anyio.fail_after(s.model_timeout):
            response = await self.herd.chat(
                alias, prompt, agent=self.name, timeout=s.model_timeout, **options
            )
        return response.content

    async def research(self, idea: str) -> tuple[dict[str, Any], str | None]:
        """The strategy spec; on failure, a spec made of the idea itself and the error."""
        s = self.settings
        prompt = (
            f"Turn this trading idea into a strategy spec.\nIdea: {idea}\n\n"
            'Reply with JSON only: {"name": "...", "entry": "when to buy", '
            '"exit": "when to sell", "indicators": ["..."]}'
        )
        try:
            text = await self._ask(s.research_model, prompt, s.spec_max_tokens, SPEC_SCHEMA)
        except HerdError as exc:
            return {"name": "idea", "entry": idea[:240], "exit": "", "indicators": []}, str(exc)
        spec = json_object(text)
        if not spec or not isinstance(spec.get("entry"), str):
            return (
                {"name": "idea", "entry": idea[:240], "exit": "", "indicators": []},
                "the research answer was not a spec; the idea text is used as the spec",
            )
        return spec, None

    async def run(self, **kwargs: Any) -> RBIResult:
        """`run(idea="..." or a file path, force=False, unsafe_no_jail=False)`."""
        s = self.settings
        raw = kwargs.get("idea") or " ".join(kwargs.get("args") or [])
        idea = read_idea(str(raw))
        digest = idea_hash(idea)
        folder = self.folder(digest)
        saved = folder / "result.json"
        if saved.is_file() and not kwargs.get("force"):
            previous = RBIResult.model_validate(storage.read_json(saved))
            previous.status, previous.reason = "duplicate", f"idea {digest} was researched before"
            return previous
        for package in ("backtesting", "pandas"):  # the child imports them: check here
            if importlib.util.find_spec(package) is None:
                raise MissingDependencyError(package, "rbi", "the rbi agent")
        # only the caller (a CLI flag), never a config file, may run without the jail
        jailed = not kwargs.get("unsafe_no_jail")
        if jailed:
            status = jail.probe()
            if not status.available:
                raise JailUnavailableError(refusal(status.reason))
        elif s.require_network_namespace and not network_namespace_available():
            raise ConfigError(
                "[agents.rbi] require_network_namespace = true, but `unshare -rn` "
                "does not work on this host — enable user namespaces or set it false"
            )
        candles = fetch_candles(
            self.herd, s.symbol, s.timeframe, s.bars, {"data_path": s.data_path}
        )
        data_csv = "time,open,high,low,close,volume\n" + "".join(
            f"{c['time']},{c['open']},{c['high']},{c['low']},{c['close']},{c['volume']}\n"
            for c in candles
        )
        limits = Limits(
            timeout_s=s.timeout_s,
            cpu_s=s.cpu_s,
            memory_mb=s.memory_mb,
            processes=s.processes,
            scratch_mb=s.scratch_mb,
        )
        result = RBIResult(
            idea_hash=digest,
            idea=idea,
            status="failed",
            folder=str(folder),
            sandbox=isolation_note(jailed, limits),
            note=model_note(self.herd, {s.research_model, s.code_model, s.debug_model}),
        )
        result.spec, result.spec_error = await self.research(idea)
        prompt = f"Strategy spec:\n{_spec_text(result.spec)}\n\n{CODE_RULES}"
        step: Literal["code", "debug"] = "code"
        alias = s.code_model
        for number in range(1, s.max_rounds + 2):
            try:
                text = await self._ask(alias, prompt, s.code_max_tokens)
            except HerdError as exc:
                result.rounds.append(
                    Round(
                        round=number,
                        step=step,
                        model=alias,
                        ok=False,
                        error=f"model failed: {exc.message}",
                    )
                )
                result.reason = f"the {step} model failed: {exc.message}"
                break
            code = extract_code(text)
            code_file = folder / f"round-{number}.py"
            code_file.parent.mkdir(parents=True, exist_ok=True)
            code_file.write_text(scrub(code or text), encoding="utf-8")
            if not code:
                record = Round(
                    round=number,
                    step=step,
                    model=alias,
                    ok=False,
                    error="the answer contained no Python code",
                    code_file=str(code_file),
                )
            else:
                t0 = time.perf_counter()
                job = functools.partial(
                    run_backtest,
                    code,
                    data_csv,
                    folder / "scratch",
                    limits,
                    cash=s.cash,
                    commission=s.commission,
                    jailed=jailed,
                )
                try:
                    run = await anyio.to_thread.run_sync(job)
                    ok, error, stats = run.ok, run.error, run.stats
                    result.sandbox = run.isolation or result.sandbox
                except OSError as exc:  # the job folder could not be written (disk full …)
                    ok, error, stats = False, f"could not start the backtest: {exc}", None
                record = Round(
                    round=number,
                    step=step,
                    model=alias,
                    ok=ok,
                    error=scrub(error) if error else None,
                    stats=stats,
                    duration_s=round(time.perf_counter() - t0, 3),
                    code_file=str(code_file),
                )
            result.rounds.append(record)
            result.code = code or result.code
            if record.ok:
                result.status, result.stats, result.reason = "ok", record.stats, ""
                break
            result.reason = f"round {number}: {(record.error or '').strip().splitlines()[-1:]}"
            step, alias = "debug", s.debug_model
            prompt = (
                f"This backtesting.py strategy fails.\n\nCode:\n```python\n{scrub(code or text)}\n"
                f"```\n\nError:\n{(record.error or '')[-2000:]}\n\nFix the code. "
                f"{CODE_RULES}"
            )
        if result.status != "ok" and result.rounds and not result.reason.startswith("the "):
            result.reason = (
                f"no working code after {len(result.rounds)} round(s); last error: "
                f"{_last_line(result.rounds[-1].error)}"
            )
        # what is saved and returned carries no secret (the model's code, errors, reason)
        result = RBIResult.model_validate(scrub_tree(result.model_dump(mode="json")))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "strategy.py").write_text(result.code, encoding="utf-8")
        if result.stats is not None:
            storage.write_json(folder / "stats.json", result.stats)
        storage.write_json(saved, result.model_dump(mode="json"))
        return result


def _spec_text(spec: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in spec.items() if v)


def _last_line(error: str | None) -> str:
    lines = (error or "").strip().splitlines()
    return lines[-1] if lines else "unknown error"
