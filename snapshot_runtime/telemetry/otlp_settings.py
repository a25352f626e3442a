"""The OTLP protocol names and the rule reading them from the environment. Pure.

Kept apart from ``tracing`` (which imports the OpenTelemetry SDK) so that the
CLI can resolve ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` before a job starts
without loading OpenTelemetry (issue 15: the first phase starts without it).
"""

from __future__ import annotations

__all__ = ["OTLP_GRPC", "OTLP_HTTP_PROTOBUF", "otlp_protocol"]

OTLP_GRPC = "grpc"
OTLP_HTTP_PROTOBUF = "http/protobuf"


def otlp_protocol(value: str | None) -> str:
    """The OTLP protocol for an ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` value. Pure.

    ``grpc`` or ``http/protobuf`` (the default, also for an empty value);
    ``http/json``, which no Python OTLP exporter speaks, and anything unknown
    fall back to ``http/protobuf``: a misspelt variable must not lose the spans.
    """
    text = (value or "").strip().lower()
    return OTLP_GRPC if text == OTLP_GRPC else OTLP_HTTP_PROTOBUF
