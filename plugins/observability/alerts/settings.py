"""`[plugins.alerts]` settings: KPI thresholds (runbook defaults), breaker, notifiers.

Defaults come from the runbook's KPI table (../shared/runbook-zh.md): mean latency
> 2 s, error rate > 5 %, CPU / memory / GPU > 80 %, model quality < 95 %. The
throughput floor (the runbook says 100 RPS) is off until you set one: most herds
see far less traffic than that and would be in alarm all day.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from modelherd.config import validate_table
from modelherd.lazy_model import LazyModel
from pydantic import ConfigDict, Field

RecoverKpi = Literal["latency_mean", "error_rate", "quality"]


def _default_recover_on() -> list[RecoverKpi]:
    return ["latency_mean", "error_rate"]


class AlertSettings(LazyModel):
    model_config = ConfigDict(extra="forbid")

    #: KPI tracking, alerts, the circuit breaker and the `herd top` status file
    enabled: bool = True
    #: sliding window the call KPIs are computed over, seconds
    window_s: float = Field(default=60.0, gt=0)
    #: how often the background thread evaluates the KPIs, seconds
    eval_interval_s: float = Field(default=5.0, gt=0)
    #: a call KPI is judged only over a window holding at least this many calls
    min_calls: int = Field(default=5, ge=1)
    #: an alert resolves only once the value is this fraction back inside the threshold
    hysteresis: float = Field(default=0.1, ge=0, lt=1)
    latency_mean_s: float | None = Field(default=2.0, gt=0)
    error_rate: float | None = Field(default=0.05, ge=0, le=1)
    #: calls per second over the window, herd-wide; None = no throughput alert
    throughput_min_rps: float | None = Field(default=None, gt=0)
    quality_min: float | None = Field(default=0.95, ge=0, le=1)
    cpu_percent: float | None = Field(default=80.0, gt=0, le=100)
    memory_percent: float | None = Field(default=80.0, gt=0, le=100)
    gpu_percent: float | None = Field(default=80.0, gt=0, le=100)
    gpu_memory_percent: float | None = Field(default=80.0, gt=0, le=100)

    #: circuit breaker: open after `breaker_failures` failed attempts within
    #: `breaker_window_s`; after `breaker_cooldown_s` let one probe call through
    breaker: bool = True
    breaker_failures: int = Field(default=5, ge=1)
    breaker_window_s: float = Field(default=30.0, gt=0)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    #: only aliases with `fallbacks` get a breaker: without one, an open circuit would
    #: only swap the model's real error for CircuitOpenError (false = every alias)
    breaker_needs_fallback: bool = True
    #: share circuit state between replicas through the Redis of `[plugins.serve]
    #: redis_url` (shared.py): unset = share when that is set; true = it must be set;
    #: false = each process decides alone
    breaker_shared: bool | None = None
    #: per-model KPI alerts that also open that model's circuit when they fire (recovery:
    #: calls go to the fallbacks; the half-open probe tries the model again later)
    recover_on: list[RecoverKpi] = Field(default_factory=_default_recover_on)

    #: notifiers: the `modelherd.alerts` logger, and a webhook POSTed as JSON
    log: bool = True
    webhook_url: str | None = None
    webhook_timeout_s: float = Field(default=3.0, gt=0)

    #: live status for `herd top`: a JSON file rewritten every `status_interval_s`
    status_file: bool = True
    #: where status files go; default: the user runtime dir (platformdirs) /modelherd
    status_dir: str | None = None
    status_interval_s: float = Field(default=1.0, gt=0)


#: thresholds that `false` switches off (TOML has no null)
_THRESHOLDS = (
    "latency_mean_s",
    "error_rate",
    "throughput_min_rps",
    "quality_min",
    "cpu_percent",
    "memory_percent",
    "gpu_percent",
    "gpu_memory_percent",
)


def parse_settings(table: Mapping[str, Any], source: str) -> AlertSettings:
    data = {k: (None if k in _THRESHOLDS and v is False else v) for k, v in table.items()}
    return validate_table(
        AlertSettings, data, f"{source}: [plugins.alerts]", "docs/observability.md"
    )
