"""An ARI endpoint in front of pebble (which has none): a directory with `renewalInfo`."""

import base64
import datetime
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

UTC = datetime.timezone.utc


class AriEndpoint:
    """A directory with `renewalInfo`, and a renewal-info resource a test steers."""

    def __init__(self, lab):
        self.lab = lab
        self.window = (datetime.timedelta(days=30), datetime.timedelta(days=31))
        self.retry_after: int | None = 3600
        self.fail = False
        self.profiles: dict[str, str] | None = None
        self.requests: list[str] = []
        self.issuers: list[bytes] | None = None
        """The key ids of the issuers it answers for, as Boulder answers for its own only: a certificate
        of another issuer is 404 Not Found. None: it answers for any."""
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                endpoint.answer(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # HTTPS, as certrenew asks of a directory: pebble's own certificate, which the lab's CA bundle trusts.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(lab.pebble_cert, lab.pebble_key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, handler):
        if handler.path == "/dir":
            directory = requests.get(self.lab.directory_url, verify=str(self.lab.ca_bundle), timeout=5).json()
            directory["renewalInfo"] = f"{self.url}/renewal-info"
            if self.profiles is not None:
                directory["meta"]["profiles"] = self.profiles
            return self.reply(handler, 200, directory)
        cert_id = handler.path.rsplit("/", 1)[-1]
        self.requests.append(cert_id)
        key_id = base64.urlsafe_b64decode(cert_id.split(".")[0] + "==")
        if self.issuers is not None and key_id not in self.issuers:
            return self.reply(handler, 404, {"type": "urn:ietf:params:acme:error:malformed",
                                             "detail": "an Authority Key Identifier that did not match a known issuer"})
        if self.fail:
            return self.reply(handler, 500, {"type": "urn:ietf:params:acme:error:serverInternal"})
        now = datetime.datetime.now(UTC)
        start, end = (now + offset for offset in self.window)
        window = {"start": start.isoformat().replace("+00:00", "Z"), "end": end.isoformat().replace("+00:00", "Z")}
        self.reply(handler, 200, {"suggestedWindow": window}, self.retry_after)

    @staticmethod
    def reply(handler, status, body, retry_after=None):
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        if retry_after is not None:
            handler.send_header("Retry-After", str(retry_after))
        handler.end_headers()
        handler.wfile.write(data)
