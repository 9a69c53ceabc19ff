"""Build the OpenTelemetry tracer and meter providers that export over OTLP.

Each Herd gets its own providers (not the global ones): an application that already
configured OpenTelemetry keeps its own setup, and tests can run many herds side by
side. Span parenting still goes through the shared OpenTelemetry *context*, so a
span the application opened is the parent of ours.

Exports run in the SDK's background threads (BatchSpanProcessor,
PeriodicExportingMetricReader): a call never waits for the collector. A collector
that is down gives one warning per outage on the `modelherd.otel` logger, never an
error to the caller.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from modelherd.errors import MissingDependencyError
from modelherd.plugins.observability.otel.settings import ResolvedOtel

log = logging.getLogger("modelherd.otel")

#: OpenTelemetry GenAI semconv advice for gen_ai.client.operation.duration (seconds)
DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
#: ... and for gen_ai.client.token.usage
TOKEN_BUCKETS = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)


class _Downgrade(logging.Filter):
    """The OTLP exporters log a failed export as ERROR; for us it is a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            record.levelno = logging.WARNING
            record.levelname = "WARNING"
        return True


_filter_lock = threading.Lock()
_filter_installed = False


def _install_log_filter() -> None:
    global _filter_installed
    with _filter_lock:
        if _filter_installed:
            return
        for name in (
            "opentelemetry.exporter.otlp.proto.http",
            "opentelemetry.exporter.otlp.proto.http.trace_exporter",
            "opentelemetry.exporter.otlp.proto.http.metric_exporter",
            "opentelemetry.exporter.otlp.proto.grpc.exporter",
            "opentelemetry.sdk.trace.export",
            "opentelemetry.sdk.metrics._internal.export",
        ):
            logging.getLogger(name).addFilter(_Downgrade())
        _filter_installed = True


class _OutageWarning:
    """Warn once when exports start failing, and once when they work again."""

    def __init__(self, what: str, endpoint: str) -> None:
        self.what = what
        self.endpoint = endpoint
        self.failing = False
        self.failures = 0

    def result(self, ok: bool) -> None:
        if ok and self.failing:
            self.failing = False
            log.warning("OTLP %s export to %s works again", self.what, self.endpoint)
        elif not ok:
            self.failures += 1
            if not self.failing:
                self.failing = True
                log.warning(
                    "OTLP %s export to %s failed — is the collector running? "
                    "(calls go on; telemetry is dropped until it answers)",
                    self.what,
                    self.endpoint,
                )


def _span_exporter(cfg: ResolvedOtel) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    if cfg.protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcSpanExporter,
            )
        except ImportError:
            raise MissingDependencyError(
                "opentelemetry-exporter-otlp-proto-grpc", "otel", "OTLP over gRPC"
            ) from None
        inner: Any = GrpcSpanExporter(
            endpoint=cfg.traces_endpoint.removesuffix("/v1/traces"),
            headers=cfg.headers or None,
            timeout=int(cfg.export_timeout_s),
            insecure=True,
        )
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        inner = OTLPSpanExporter(
            endpoint=cfg.traces_endpoint, headers=cfg.headers or None, timeout=cfg.export_timeout_s
        )
    outage = _OutageWarning("trace", cfg.traces_endpoint)

    class WarningSpanExporter(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            try:
                result = inner.export(spans)
            except Exception:  # an exporter bug must not reach the batch thread
                result = SpanExportResult.FAILURE
            outage.result(result == SpanExportResult.SUCCESS)
            return result

        def shutdown(self) -> None:
            inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return bool(inner.force_flush(timeout_millis))

    return WarningSpanExporter()


def _metric_exporter(cfg: ResolvedOtel) -> Any:
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

    if cfg.protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter as GrpcMetricExporter,
            )
        except ImportError:
            raise MissingDependencyError(
                "opentelemetry-exporter-otlp-proto-grpc", "otel", "OTLP over gRPC"
            ) from None
        inner: Any = GrpcMetricExporter(
            endpoint=cfg.metrics_endpoint.removesuffix("/v1/metrics"),
            headers=cfg.headers or None,
            timeout=int(cfg.export_timeout_s),
            insecure=True,
        )
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        inner = OTLPMetricExporter(
            endpoint=cfg.metrics_endpoint, headers=cfg.headers or None, timeout=cfg.export_timeout_s
        )
    outage = _OutageWarning("metric", cfg.metrics_endpoint)

    class WarningMetricExporter(MetricExporter):
        def __init__(self) -> None:
            super().__init__(
                preferred_temporality=inner._preferred_temporality,
                preferred_aggregation=inner._preferred_aggregation,
            )

        def export(
            self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any
        ) -> MetricExportResult:
            try:
                result = inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
            except Exception:
                result = MetricExportResult.FAILURE
            outage.result(result == MetricExportResult.SUCCESS)
            return result

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return bool(inner.force_flush(timeout_millis))

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            inner.shutdown(timeout_millis=timeout_millis, **kwargs)

    return WarningMetricExporter()


def _import_sdk() -> None:
    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "opentelemetry-sdk", "otel", "tracing ([plugins.otel] or OTEL_EXPORTER_OTLP_ENDPOINT)"
        ) from None


class Exporters:
    """The providers one Herd exports through; `shutdown()` flushes and stops them."""

    def __init__(self, cfg: ResolvedOtel) -> None:
        _import_sdk()
        _install_log_filter()
        from opentelemetry.sdk.resources import Resource

        resource = Resource.create({"service.name": cfg.service_name})
        self.tracer_provider: Any = None
        self.meter_provider: Any = None
        self.tracer: Any = None
        self.meter: Any = None
        if cfg.traces:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            self.tracer_provider = TracerProvider(resource=resource)
            self.tracer_provider.add_span_processor(
                # a roomy queue: spans arrive from the pump in bursts (every 200 ms)
                BatchSpanProcessor(
                    _span_exporter(cfg),
                    schedule_delay_millis=1000,
                    max_queue_size=32768,
                    export_timeout_millis=int(cfg.export_timeout_s * 1000),
                )
            )
            self.tracer = self.tracer_provider.get_tracer("modelherd")
        if cfg.metrics:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            reader = PeriodicExportingMetricReader(
                _metric_exporter(cfg),
                export_interval_millis=cfg.export_interval_s * 1000,
                export_timeout_millis=cfg.export_timeout_s * 1000,
            )
            self.meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
            self.meter = self.meter_provider.get_meter("modelherd")

    def force_flush(self, timeout_s: float = 5.0) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush(int(timeout_s * 1000))
        if self.meter_provider is not None:
            self.meter_provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Flush what is buffered and stop the export threads (bounded by the timeouts)."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()
