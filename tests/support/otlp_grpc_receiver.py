"""A real OTLP/gRPC traces receiver on 127.0.0.1:0 (grpcio + opentelemetry-proto).

``OtlpGrpcReceiver`` runs a ``grpc.server`` implementing the collector's
``TraceService.Export`` from construction and keeps, in arrival order, the
same records as ``otlp_receiver.OtlpReceiver`` (``raw``, ``requests``,
``spans``) plus ``metadata`` (every call's invocation metadata, to check the
headers a client sent). ``up = False`` answers UNAVAILABLE (retryable, a
collector outage) and keeps nothing; ``refused`` counts those calls.
Plaintext only (``endpoint`` is ``http://127.0.0.1:PORT``, which the gRPC
exporter takes as "insecure"). Use it as a context manager or call ``close()``.
"""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.support.otlp_receiver import ReceivedSpan, flatten

__all__ = ["OtlpGrpcReceiver"]


class OtlpGrpcReceiver:
    def __init__(self, *, up: bool = True) -> None:
        self.up = up
        self.raw: list[bytes] = []
        self.requests: list[ExportTraceServiceRequest] = []
        self.spans: list[ReceivedSpan] = []
        self.metadata: list[dict[str, str]] = []
        self.refused = 0
        self._lock = threading.Lock()
        receiver = self

        class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(
                self, request: ExportTraceServiceRequest, context: Any
            ) -> ExportTraceServiceResponse:
                if not receiver._receive(request, dict(context.invocation_metadata())):
                    context.abort(grpc.StatusCode.UNAVAILABLE, "collector down")
                return ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _receive(self, request: ExportTraceServiceRequest, metadata: dict[str, str]) -> bool:
        with self._lock:
            self.metadata.append(metadata)
            if not self.up:
                self.refused += 1
                return False
            self.raw.append(request.SerializeToString())
            self.requests.append(request)
            self.spans.extend(flatten(request))
            return True

    def close(self) -> None:
        self.server.stop(grace=None).wait()

    def __enter__(self) -> OtlpGrpcReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
