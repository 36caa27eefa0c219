"""A Kubernetes API server that replays recorded responses, for ghostwire's pod watch.

No API server runs on the build machine: this serves a recorded v1 PodList for the list
(`GET /api/v1/pods?...`) and, for the watch (`...&watch=true`), recorded watch events
one per line, then holds the stream open as a real server does. Every request line and
its Authorization header are appended to LOG as JSON, so the test can check what the
agent asked for (its fieldSelector).
Usage: kube_api.py PORT LIST_JSON WATCH_JSONL LOG [WATCH_DELAY_S]
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

port, list_path, watch_path, log_path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
delay = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
watches = 0


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        global watches
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        with open(log_path, "a") as log:
            log.write(json.dumps({"path": self.path, "authorization": self.headers.get("Authorization")}) + "\n")
        if url.path != "/api/v1/pods":
            self.send_error(404)
            return
        if query.get("watch", [""])[0] not in ("true", "1"):
            body = open(list_path, "rb").read()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        watches += 1
        if watches == 1:
            # The recorded events arrive a moment after the list, as changes do.
            time.sleep(delay)
            for line in open(watch_path, "rb"):
                if line.strip():
                    self.wfile.write(line.rstrip(b"\n") + b"\n")
                    self.wfile.flush()
        # Held open like a real watch (the server ends it after timeoutSeconds).
        end = time.time() + float(query.get("timeoutSeconds", ["290"])[0])
        while time.time() < end:
            time.sleep(0.5)

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
