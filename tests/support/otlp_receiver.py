"""A real OTLP/HTTP traces receiver on 127.0.0.1:0 that decodes what it is sent.

``OtlpReceiver`` runs ``http.server`` in a daemon thread from construction,
accepts ``POST /v1/traces`` with ``application/x-protobuf`` bodies (gzip or
not), decodes each as ``ExportTraceServiceRequest`` (opentelemetry-proto) and
keeps, in arrival order:

* ``paths``    the path of every POST, refused ones included;
* ``raw``      every accepted body, decompressed (to search the wire for secrets);
* ``requests`` every accepted body, decoded;
* ``spans``    every span of those, flattened into ``ReceivedSpan`` records;
* ``refused``  how many POSTs were refused while ``up`` was False.

Two ways to fail: ``status`` (e.g. 400, a collector that rejects the data, which
the OTLP spec says not to retry) answers every request with that status after
recording it; ``up = False`` answers 503 (retryable) and keeps nothing, a
collector outage, switchable at run time without closing the port.
Use it as a context manager or call ``close()``.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

__all__ = ["OtlpReceiver", "ReceivedSpan", "any_value", "flatten"]


def any_value(value: AnyValue) -> Any:
    """A Python value for an OTLP ``AnyValue``, arrays and key-value lists included."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    name: str
    kind: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    events: list[str]
    resource: dict[str, Any]
    scope: tuple[str, str]  # (name, version)


class OtlpReceiver:
    def __init__(self, *, status: int = 200, up: bool = True) -> None:
        self.status = status
        self.up = up
        self.paths: list[str] = []
        self.raw: list[bytes] = []
        self.requests: list[ExportTraceServiceRequest] = []
        self.spans: list[ReceivedSpan] = []
        self.refused = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if not receiver._receive(self.path, body):
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1/traces"

    def _receive(self, path: str, body: bytes) -> bool:
        """Record one POST; False when it is refused (``up`` is False)."""
        with self._lock:
            self.paths.append(path)
            if not self.up:
                self.refused += 1
                return False
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            self.raw.append(body)
            self.requests.append(request)
            self.spans.extend(flatten(request))
            return True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def flatten(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    out = []
    for rs in request.resource_spans:
        resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    ReceivedSpan(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=s.kind,
                        attributes={kv.key: any_value(kv.value) for kv in s.attributes},
                        status_code=s.status.code,
                        status_message=s.status.message,
                        events=[e.name for e in s.events],
                        resource=resource,
                        scope=(ss.scope.name, ss.scope.version),
                    )
                )
    return out
