"""A real OTLP/HTTP trace receiver for the tests: the protocol peer a collector or Jaeger would be.

It is the benchmark's OTLP/HTTP endpoint (``POST /v1/traces`` and ``/v1/logs``, protobuf, optionally gzip) with a
decoder: each ExportTraceServiceRequest (ExportLogsServiceRequest) is parsed with the OpenTelemetry protocol package
and its spans (log records) kept for assertions.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
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


@dataclass(frozen=True)
class ReceivedLogRecord:
    service: str
    severity: str
    body: str
    trace_id: str  # "" when written outside any span
    span_id: str
    attributes: dict[str, object]


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


class OtlpReceiver(OtlpSink):
    def __init__(self) -> None:
        super().__init__(on_traces=self._store, on_logs=self._store_logs)
        self.spans: list[ReceivedSpan] = []
        self.log_records: list[ReceivedLogRecord] = []
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

    def _store_logs(self, body: bytes) -> None:
        request = ExportLogsServiceRequest()
        request.ParseFromString(body)
        received = []
        for resource_logs in request.resource_logs:
            resource = {a.key: _value(a.value) for a in resource_logs.resource.attributes}
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    trace_id = record.trace_id.hex().strip("0") and record.trace_id.hex()
                    span_id = record.span_id.hex().strip("0") and record.span_id.hex()
                    received.append(ReceivedLogRecord(
                        service=str(resource.get("service.name", "")), severity=record.severity_text,
                        body=str(_value(record.body)), trace_id=trace_id, span_id=span_id,
                        attributes={a.key: _value(a.value) for a in record.attributes},
                    ))
        with self.lock:
            self.log_records.extend(received)

    def logs_snapshot(self) -> list[ReceivedLogRecord]:
        with self.lock:
            return list(self.log_records)

    def snapshot(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)
