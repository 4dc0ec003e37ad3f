"""Run an ASGI app on a socket we bind ourselves.

Binding first lets a service take port 0 (any free port) and publish the real
URL in a file before serving, which is how `glidewms up` and the tests find
each other without guessing ports or sleeping.

With a certificate and key (the `tls_cert`/`tls_key` of every service's
configuration) uvicorn serves HTTPS and the published URL says https.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn

from glidewms.config.loader import ConfigError
from glidewms.protocol import ASGIApp
from glidewms.security.tls import TlsError, server_context

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after a graceful shutdown, which kills the
    process before our clean-up runs; a service stopped on purpose exits 0.

    Once the app has started (imports done, the pool's queue loaded), what
    exists then lives as long as the process: ``gc.freeze()`` takes it out of
    the collector's sight, so a full collection, which comes every few seconds
    on a busy service and stops every request meanwhile, walks only what was
    made since.
    """

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        gc.collect()
        gc.freeze()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket, created with ``proto=IPPROTO_TCP`` on purpose.

    asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets whose
    ``proto`` says TCP, and accepted sockets inherit the listener's ``proto``:
    with the default 0, every response uvicorn writes in two pieces (headers,
    then body) waited for the client's delayed ACK, ~40 ms per request on a
    kept-alive connection (fresh connections hid it: closing flushes).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, tls: bool = False) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def serve(
    make_app: Callable[[str], ASGIApp],
    host: str,
    port: int,
    url_file: Path | None = None,
    *,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> None:
    """Serve the app built by `make_app(url)` until SIGINT/SIGTERM, over HTTPS
    when given `tls_cert` and `tls_key` (checked before anything starts).

    The app gets its own public URL (factories hand it to pilots); the URL is
    written to `url_file` once the socket listens. uvicorn runs on uvloop and
    httptools when they are installed (the `fast` extra), else on asyncio and h11.
    """
    tls = tls_cert is not None and tls_key is not None
    if tls_cert is not None and tls_key is not None:
        try:
            server_context(tls_cert, tls_key)
        except TlsError as exc:
            raise ConfigError(str(exc)) from None
    sock = bind(host, port)
    url = url_of(sock, tls)
    app = make_app(url)
    if url_file is not None:
        write_atomically(Path(url_file), url + "\n")
    log.info("listening on %s", url)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        ssl_certfile=tls_cert if tls else None,
        ssl_keyfile=tls_key if tls else None,
    )
    server = _Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        if url_file is not None:
            Path(url_file).unlink(missing_ok=True)
