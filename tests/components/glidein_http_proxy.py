"""A tiny forwarding HTTP proxy on loopback: the STAND-IN for a site's squid.

It serves what a squid serves a worker node for plain http: requests with an
absolute URI (``GET http://host:port/path HTTP/1.1``), forwarded to the origin
with their headers and body, the answer relayed back. It records every URL it
forwarded (``urls``) and the Authorization headers it saw, so a test can tell
that a download really went through the proxy. No caching, no CONNECT.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}


class HttpProxy:
    """Start with ``with HttpProxy() as proxy:``; ``proxy.url`` is its address."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.forward(self)

            do_POST = do_PUT = do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HttpProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def forward(self, h: BaseHTTPRequestHandler) -> None:
        target = urllib.parse.urlsplit(h.path)
        if target.scheme != "http" or not target.hostname:
            h.send_error(400, "a proxy request needs an absolute http:// URI")
            return
        with self.lock:
            self.urls.append(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP}
        path = target.path + (f"?{target.query}" if target.query else "")
        conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=60)
        try:
            conn.request(h.command, path or "/", body=body, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
        except OSError as exc:
            h.send_error(502, f"origin unreachable: {exc}")
            return
        finally:
            conn.close()
        h.send_response(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                h.send_header(key, value)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
