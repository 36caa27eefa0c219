"""An OpenTelemetry-instrumented gRPC client (Python SDK + opentelemetry-instrumentation-grpc).

Calls /demo.Echo/Chain (tests/peers/grpc_server.py) N times on one channel. The gRPC
client instrumentation makes a CLIENT span per call (a root: there is no span around it)
and sends its context as `traceparent` metadata; the SDK exports the spans over OTLP/gRPC
to ENDPOINT. Prints one JSON line per call, as the call ends:
  {"trace_id": 32 hex, "span_id": 16 hex (the CLIENT span), "status": "OK"}
then flushes the SDK (force_flush + shutdown) before exiting. Exits 1 if a call failed.

Usage: sdk_grpc_client.py --port P --endpoint http://HOST:4317 [--service-name N]
                          [--path PATH] [-n N]
(--endpoint defaults to OTEL_EXPORTER_OTLP_ENDPOINT, --service-name to OTEL_SERVICE_NAME,
else "sdk-grpc-client".)
"""
import argparse
import json
import os
import sys

import grpc
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


class ClientSpans(SpanProcessor):
    """Keeps the context of every finished CLIENT span, in order."""

    def __init__(self):
        self.ended = []

    def on_end(self, span):
        if span.kind == trace.SpanKind.CLIENT:
            self.ended.append(span.get_span_context())


def main():
    ap = argparse.ArgumentParser(description="SDK-instrumented demo.Echo/Chain client")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--endpoint", default=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
    ap.add_argument("--service-name", default=os.environ.get("OTEL_SERVICE_NAME", "sdk-grpc-client"))
    ap.add_argument("--path", default="ok")
    ap.add_argument("-n", type=int, default=1)
    args = ap.parse_args()
    if not args.endpoint:
        sys.exit("sdk_grpc_client: no --endpoint (nor OTEL_EXPORTER_OTLP_ENDPOINT)")

    provider = TracerProvider(resource=Resource.create({"service.name": args.service_name}))
    # The exporter's own channel is made before the instrumentation patches grpc, so the
    # exports are not traced.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=args.endpoint, insecure=True)))
    spans = ClientSpans()
    provider.add_span_processor(spans)
    trace.set_tracer_provider(provider)
    GrpcInstrumentorClient().instrument()

    failed = 0
    with grpc.insecure_channel(f"127.0.0.1:{args.port}", options=[("grpc.enable_http_proxy", 0)]) as channel:
        chain = channel.unary_unary("/demo.Echo/Chain", lambda b: b, lambda b: b)
        for _ in range(args.n):
            try:
                chain(args.path.encode(), timeout=15)
                status = "OK"
            except grpc.RpcError as e:
                status = e.code().name
                failed += 1
            ctx = spans.ended[-1] if spans.ended else None
            print(
                json.dumps(
                    {
                        "trace_id": format(ctx.trace_id, "032x") if ctx else "",
                        "span_id": format(ctx.span_id, "016x") if ctx else "",
                        "status": status,
                    }
                ),
                flush=True,
            )
    provider.force_flush(10000)
    provider.shutdown()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
