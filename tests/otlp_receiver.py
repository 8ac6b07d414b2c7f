"""A real OTLP/HTTP trace receiver for the tests: the protocol peer a collector or Jaeger would be.

It is the benchmark's OTLP/HTTP endpoint (``POST /v1/traces``, protobuf, optionally gzip) with a decoder: each
ExportTraceServiceRequest is parsed with the OpenTelemetry protocol package and its spans kept for assertions.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from infra.bench.otlp_sink import OtlpSink


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    instance: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int  # 2: server, 3: client (opentelemetry.proto.trace.v1.Span.SpanKind)
    attributes: dict[str, object]


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


class OtlpReceiver(OtlpSink):
    def __init__(self) -> None:
        super().__init__(on_traces=self._store)
        self.spans: list[ReceivedSpan] = []
        self.lock = threading.Lock()

    def _store(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        instance=str(resource.get("service.instance.id", "")),
                        name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(), kind=span.kind,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                    ))
        with self.lock:
            self.spans.extend(received)

    def snapshot(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)
