"""rotel trace processor: appends every span rotel receives to $GHOSTWIRE_ROTEL_OUT as
one JSON object per line, so a test can check what the collector really got."""
import json
import os


def _value(v):
    inner = v.value if v is not None else None
    return inner if isinstance(inner, (int, float, bool, str)) else str(inner)


def process_spans(resource_spans):
    resource = {}
    if resource_spans.resource:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
    lines = []
    for scope_spans in resource_spans.scope_spans:
        for s in scope_spans.spans:
            lines.append(json.dumps({
                "trace_id": s.trace_id.hex(),
                "span_id": s.span_id.hex(),
                "parent_span_id": s.parent_span_id.hex(),
                "name": s.name,
                "kind": int(s.kind),
                "attributes": {kv.key: _value(kv.value) for kv in s.attributes},
                "resource": resource,
            }))
    with open(os.environ["GHOSTWIRE_ROTEL_OUT"], "a") as f:
        for line in lines:
            f.write(line + "\n")
