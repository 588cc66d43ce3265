"""A real webhook receiver for the tests: an HTTP server on loopback that verifies every delivery
with the Standard Webhooks reference library (pip ``standardwebhooks``), never with our code.

``receiver.script`` is the list of status codes to answer, in order (then 200 for ever);
``receiver.hold`` (a threading.Event) makes it hang before answering until it is set.
"""
import json
import threading
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


class Receiver:
    def __init__(self):
        self.secret = None  # set by the test once the endpoint exists
        self.script = []
        self.hold = None
        self.respond = None  # a callable(handler) that writes the whole response instead
        self.requests = []  # every request: {"headers", "body", "verified", "status"}
        self.lock = threading.Lock()
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload = Webhook(receiver.secret).verify(body, headers)
                    verified = True
                except (WebhookVerificationError, ValueError, TypeError) as exc:
                    payload, verified = {"error": str(exc)}, False
                with receiver.lock:
                    status = receiver.script.pop(0) if receiver.script else 200
                    entry = {"headers": headers, "body": body, "payload": payload, "verified": verified,
                             "status": status}
                    receiver.requests.append(entry)
                if receiver.hold is not None:
                    receiver.hold.wait(30)
                if receiver.respond is not None:
                    receiver.respond(self)
                    return
                reply = json.dumps({"received": True}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        return Handler

    def events(self, answered=None):
        """(webhook-id, type) of each verified request (answered with ``answered``, if given)."""
        with self.lock:
            return [(r["headers"]["webhook-id"], r["payload"]["type"]) for r in self.requests
                    if r["verified"] and (answered is None or r["status"] == answered)]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.close()


@pytest.fixture
def webhook_config(relay_config, reconfigure):
    """Deliveries to loopback allowed (as `inboxlayer dev` does), quick retries and dispatch."""
    relay_config["webhooks"].update(allow_loopback=True, retry_schedule="1s 1s 1s 1s", dispatch_interval=1,
                                    lease=16)
    reconfigure()
    return relay_config


def add_endpoint(api, receiver, **body):
    """Create an endpoint for ``receiver`` through the API; the receiver learns its secret."""
    response = api.post("/v1/webhooks", json={"url": receiver.url, **body})
    assert response.status_code == 201, response.text
    receiver.secret = response.json()["secret"]
    return response.json()


def deliver_pending():
    """One dispatch pass, then an in-process worker drains the webhook queue (burst)."""
    from core import outbox
    from core import webhooks
    from smtpd_worker.worker import RelayWorker

    handed = webhooks.dispatch_due()
    RelayWorker([outbox.webhook_queue()], connection=outbox.connection()).work(burst=True)
    return handed
