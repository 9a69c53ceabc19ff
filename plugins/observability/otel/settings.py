"""`[plugins.otel]` settings, merged with the standard OTEL_* environment variables.

Tracing is OFF unless `[plugins.otel] enabled = true` or an OTLP endpoint is set in the
environment (OTEL_EXPORTER_OTLP_ENDPOINT, or its _TRACES_ / _METRICS_ variant).
`OTEL_SDK_DISABLED=true` switches it off whatever the file says. When off, the plugin
registers no per-call hook, so the kernel pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from modelherd.config import validate_table
from modelherd.errors import ConfigError
from modelherd.lazy_model import LazyModel
from pydantic import ConfigDict, Field

DEFAULT_ENDPOINT = "http://localhost:4318"
_ENDPOINT_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)


class OtelSettings(LazyModel):
    """What `[plugins.otel]` may hold (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    #: None = on when an OTLP endpoint is set in the environment
    enabled: bool | None = None
    #: collector base URL; /v1/traces and /v1/metrics are appended (HTTP)
    endpoint: str | None = None
    protocol: Literal["http/protobuf", "grpc"] | None = None
    traces: bool = True
    metrics: bool = True
    #: record prompts and answers on spans (gen_ai.input.messages / gen_ai.output.messages)
    capture_content: bool | None = None
    service_name: str | None = None
    #: how often metrics are pushed, seconds
    export_interval_s: float = Field(default=10.0, gt=0)
    #: per-export HTTP timeout, seconds (exports run in a background thread)
    export_timeout_s: float = Field(default=5.0, gt=0)
    #: extra headers for the collector (e.g. an auth token); never logged
    headers: dict[str, str] = Field(default_factory=dict)


class ResolvedOtel(LazyModel):
    """Settings after the environment has been applied: what the exporter will use."""

    enabled: bool
    traces_endpoint: str
    metrics_endpoint: str
    protocol: Literal["http/protobuf", "grpc"]
    traces: bool
    metrics: bool
    capture_content: bool
    service_name: str
    export_interval_s: float
    export_timeout_s: float
    headers: dict[str, str]


def parse_settings(table: Mapping[str, Any], source: str) -> OtelSettings:
    return validate_table(OtelSettings, table, f"{source}: [plugins.otel]", "docs/observability.md")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _signal_endpoint(base: str, signal: str) -> str:
    return base.rstrip("/") + f"/v1/{signal}"


def resolve(settings: OtelSettings, env: Mapping[str, str]) -> ResolvedOtel:
    """Apply the environment: explicit file settings win over OTEL_* variables."""
    env_endpoint = any(env.get(name) for name in _ENDPOINT_VARS)
    enabled = settings.enabled if settings.enabled is not None else env_endpoint
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        enabled = False
    base = settings.endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_ENDPOINT
    traces = (
        _signal_endpoint(settings.endpoint, "traces")
        if settings.endpoint
        else env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or _signal_endpoint(base, "traces")
    )
    metrics = (
        _signal_endpoint(settings.endpoint, "metrics")
        if settings.endpoint
        else env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or _signal_endpoint(base, "metrics")
    )
    protocol = settings.protocol or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    if protocol not in ("http/protobuf", "grpc"):
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported — "
            f"use http/protobuf (or grpc)"
        )
    capture = (
        settings.capture_content
        if settings.capture_content is not None
        else _truthy(env.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"))
    )
    return ResolvedOtel(
        enabled=bool(enabled),
        traces_endpoint=traces,
        metrics_endpoint=metrics,
        protocol=protocol,
        traces=settings.traces and env.get("OTEL_TRACES_EXPORTER", "").lower() != "none",
        metrics=settings.metrics and env.get("OTEL_METRICS_EXPORTER", "").lower() != "none",
        capture_content=capture,
        service_name=settings.service_name or env.get("OTEL_SERVICE_NAME") or "modelherd",
        export_interval_s=settings.export_interval_s,
        export_timeout_s=settings.export_timeout_s,
        headers=dict(settings.headers),
    )
