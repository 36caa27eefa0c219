"""OpenTelemetry-instrumented service A (Flask + requests instrumentation, Python SDK).

GET /chain (or /chain/ID) calls DOWNSTREAM_URL + "/work" (or "/work/ID") with a new
connection per call (plain `requests.get`, no Session, so the instrumentation sends
`traceparent`) and answers {"trace_id": <32 hex of the Flask server span>, "status":
<downstream status>}. Spans go to OTLP_ENDPOINT over gRPC, one export per span
(SimpleSpanProcessor), resource service.name=svc-a.
Usage: sdk_flask.py PORT DOWNSTREAM_URL OTLP_ENDPOINT [BIND_ADDRESS]   (default 127.0.0.1)
Environment fallbacks: DOWNSTREAM_URL, OTLP_ENDPOINT.
"""
import os
import sys

import requests
from flask import Flask, jsonify
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

port = int(sys.argv[1])
downstream = (sys.argv[2] if len(sys.argv) > 2 else os.environ["DOWNSTREAM_URL"]).rstrip("/")
otlp = sys.argv[3] if len(sys.argv) > 3 else os.environ["OTLP_ENDPOINT"]
bind = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"

provider = TracerProvider(resource=Resource.create({"service.name": "svc-a"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=otlp, insecure=True)))
trace.set_tracer_provider(provider)
RequestsInstrumentor().instrument()

app = Flask("svc-a")
FlaskInstrumentor().instrument_app(app)


def _chain(suffix):
    trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
    status = requests.get(downstream + "/work" + suffix, timeout=10).status_code
    return jsonify({"trace_id": trace_id, "status": status})


@app.route("/chain")
def chain():
    return _chain("")


@app.route("/chain/<rid>")
def chain_id(rid):
    return _chain("/" + rid)


if __name__ == "__main__":
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app.run(host=bind, port=port, threaded=True)
