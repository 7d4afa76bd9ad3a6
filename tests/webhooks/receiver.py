"""A webhook receiver for the tests: a real HTTP server on loopback that checks every
message's signature with the Standard Webhooks library (PyPI `standardwebhooks`, not
linkpulse's code) and appends what it took to a JSON-lines file, one line per message:

    {"id": <webhook-id>, "type": ..., "clicks": [[domain, code, seq], ...], "data": ...}

A message whose signature does not verify is answered 401 and written as {"invalid": ...}.

    python3 receiver.py --port P --out FILE --secret whsec_... [--secret ...]

POST /_mode {"mode": "ok" | "fail" | "slow" | "redirect", "delay": seconds, "retryAfter": seconds}
changes how it answers: `fail` answers 500 (with Retry-After when given), `slow` waits `delay`
seconds before answering 204, `redirect` answers 307 to another URL. Killing it and starting it again on the same port and file is
"down for a while".
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--out", required=True)
parser.add_argument("--secret", action="append", required=True)
args = parser.parse_args()

verifiers = [Webhook(s) for s in args.secret]
mode = {"mode": "ok", "delay": 0.0, "retryAfter": None}
lock = threading.Lock()
out = open(args.out, "a", buffering=1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self, status, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/_mode":
            with lock:
                mode.update(json.loads(body))
            return self.answer(204)
        with lock:
            current = dict(mode)
        headers = {k.lower(): v for k, v in self.headers.items()}
        payload = None
        for verifier in verifiers:
            try:
                payload = verifier.verify(body, headers)
                break
            except WebhookVerificationError:
                continue
        if payload is None:
            with lock:
                out.write(json.dumps({"invalid": headers.get("webhook-id")}) + "\n")
            return self.answer(401)
        # Checked before failing: every attempt of a retried message is signed anew.
        if current["mode"] == "redirect":
            return self.answer(307, [("Location", "http://127.0.0.1:9/elsewhere")])
        if current["mode"] == "fail":
            extra = [("Retry-After", str(current["retryAfter"]))] if current["retryAfter"] else []
            return self.answer(500, extra)
        if current["mode"] == "slow":
            time.sleep(float(current["delay"]))
        line = {"id": headers["webhook-id"], "type": payload["type"]}
        if payload["type"] == "link.clicked":
            line["clicks"] = [[c["domain"], c["code"], c["seq"]] for c in payload["data"]["clicks"]]
        else:
            line["data"] = payload["data"]
        with lock:
            out.write(json.dumps(line) + "\n")
        self.answer(204)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A sender killed mid-request (the tests kill linkpulse) is not the receiver's error.
        pass


server = Server(("127.0.0.1", args.port), Handler)
print("listening", flush=True)
server.serve_forever()
