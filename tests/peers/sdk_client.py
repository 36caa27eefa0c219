"""An OpenTelemetry-instrumented client (Python SDK + requests instrumentation).

Calls URL once inside a root span; the requests instrumentation adds a CLIENT span and
sends its context as `traceparent`. Prints one JSON line with the trace id and the
CLIENT span id, i.e. the parent the server side must report.
Usage: sdk_client.py URL
"""
import json
import sys

import requests
from opentelemetry import trace
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider(resource=Resource.create({"service.name": "sdk-client"}))
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
RequestsInstrumentor().instrument()

with trace.get_tracer("e2e").start_as_current_span("checkout"):
    status = requests.get(sys.argv[1], timeout=10).status_code

client = [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.CLIENT]
assert len(client) == 1, client
ctx = client[0].get_span_context()
print(json.dumps({
    "trace_id": format(ctx.trace_id, "032x"),
    "span_id": format(ctx.span_id, "016x"),
    "status": status,
}))
