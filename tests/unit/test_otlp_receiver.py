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


def test_log_records_from_the_sdk_exporter_arrive_decoded_with_their_trace() -> None:
    import logging

    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

    with OtlpReceiver() as receiver:
        logs = LoggerProvider(resource=Resource.create({"service.name": "unit"}))
        logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{receiver.endpoint}/v1/logs")))
        logger = logging.getLogger("test_otlp_receiver.logs")
        logger.propagate = False
        handler = LoggingHandler(logger_provider=logs)
        logger.addHandler(handler)
        tracer = TracerProvider().get_tracer("test")
        try:
            with tracer.start_as_current_span("request") as span:
                logger.warning("inside %s", "the span")
            logger.warning("outside")
        finally:
            logger.removeHandler(handler)
            logs.shutdown()
        records = {r.body: r for r in receiver.logs_snapshot()}
    assert set(records) == {"inside the span", "outside"}
    assert records["inside the span"].trace_id == format(span.get_span_context().trace_id, "032x")
    assert records["outside"].trace_id == ""
    assert (records["outside"].service, records["outside"].severity) == ("unit", "WARN")
