#!/usr/bin/env python3
"""A "legacy" Python backend behind hookgate: prints each event and re-verifies it.

hookgate forwards the sender's webhook-* headers and the exact body bytes, so a backend
can re-check the Standard Webhooks signature with the same secret (defence in depth, or
during a migration). Standard library only. WEBHOOK_SECRET may list several secrets
separated by spaces (the new one and the old one, while a secret is rotated); a
signature made with any of them is accepted.

    WEBHOOK_SECRET=whsec_... PORT=9001 python3 examples/python-upstream/app.py
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRETS = os.environ.get("WEBHOOK_SECRET", "").split()
TOLERANCE_SECONDS = 5 * 60


def key_from_secret(secret: str) -> bytes:
    """whsec_<base64> (padded or not) is the key's base64; anything else is used as its
    UTF-8 bytes, as hookgate reads a secret."""
    if secret.startswith("whsec_"):
        encoded = secret[len("whsec_"):]
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4))
    return secret.encode()


KEYS = [key_from_secret(secret) for secret in SECRETS]


def verify(headers, body: bytes) -> str:
    """Returns "ok" or why the request is not signed with SECRET."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        return "missing webhook-* headers"
    # isdigit() alone also takes digits such as "²", which int() refuses.
    if not (timestamp.isascii() and timestamp.isdigit()):
        return "stale timestamp"
    if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        return "stale timestamp"
    signed = f"{msg_id}.{timestamp}.".encode() + body
    for key in KEYS:
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
        for entry in signatures.split():
            version, _, signature = entry.partition(",")
            if version == "v1" and hmac.compare_digest(signature.encode(), expected):
                return "ok"
    return "invalid signature"


def event_type_of(headers, body: bytes) -> str:
    """hookgate's X-Hookgate-Event-Type, else the body's "type" if it has one."""
    if headers.get("x-hookgate-event-type"):
        return headers["x-hookgate-event-type"]
    try:
        payload = json.loads(body)
    except ValueError:
        return "-"
    return payload.get("type", "-") if isinstance(payload, dict) else "-"


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        verdict = verify(self.headers, body)
        event_type = event_type_of(self.headers, body)
        print(
            f"python-upstream: {verdict} {event_type} webhook-id={self.headers.get('webhook-id')} "
            f"source={self.headers.get('x-hookgate-source')} bytes={len(body)}",
            flush=True,
        )
        status = 200 if verdict == "ok" else 401
        answer = json.dumps({"received": verdict == "ok", "verdict": verdict}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass  # one line per event is printed above


def main():
    if not SECRETS:
        sys.exit("set WEBHOOK_SECRET to the source's signing secret")
    port = int(os.environ.get("PORT", "9001"))
    host = os.environ.get("HOST", "127.0.0.1")
    server = ThreadingHTTPServer((host, port), Handler)
    print(f"python-upstream: listening on http://{host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
