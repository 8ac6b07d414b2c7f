"""The tests' OTLP receiver speaks the real protocol: OpenTelemetry's own OTLP/HTTP exporter delivers to it."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.otlp_receiver import OtlpReceiver


def test_spans_from_the_sdk_exporter_arrive_decoded() -> None:
    with OtlpReceiver() as receiver:
        provider = TracerProvider(resource=Resource.create({"service.name": "unit", "service.instance.id": "u-1"}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("outer") as outer, tracer.start_as_current_span("inner") as inner:
            inner.set_attribute("prefect.run.type", "task")
        provider.shutdown()
        spans = {s.name: s for s in receiver.snapshot()}
    assert set(spans) == {"outer", "inner"}
    assert spans["inner"].trace_id == spans["outer"].trace_id == format(outer.get_span_context().trace_id, "032x")
    assert spans["inner"].parent_span_id == spans["outer"].span_id
    assert spans["inner"].attributes == {"prefect.run.type": "task"}
    assert (spans["inner"].service, spans["inner"].instance) == ("unit", "u-1")
