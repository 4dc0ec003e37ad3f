"""The uvicorn wrapper: its socket (what asyncio does with it matters for
latency) and its TLS (a service with a certificate publishes an https URL)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path

import pytest
from pydantic import BaseModel

from glidewms.config import ConfigError, load_config
from glidewms.config.factory import FactoryConfig
from glidewms.config.frontend import FrontendConfig
from glidewms.config.pool import PoolConfig
from glidewms.protocol import ASGIApp
from glidewms.security.tls import loopback_tls
from glidewms.service import bind, serve, url_of


def test_connections_accepted_on_bind_have_nagle_off() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose proto says TCP. Without
    it every response written in two pieces (uvicorn: headers, then body)
    waited ~40 ms for the client's delayed ACK on a kept-alive connection."""
    listener = bind("127.0.0.1", 0)
    assert listener.proto == socket.IPPROTO_TCP

    async def accepted_nodelay() -> int:
        loop = asyncio.get_running_loop()
        seen: asyncio.Future[int] = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await loop.create_server(Probe, sock=listener)
        try:
            port = listener.getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                return await asyncio.wait_for(seen, 30)
            finally:
                writer.close()
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(accepted_nodelay()) != 0


def test_a_tls_service_publishes_an_https_url() -> None:
    listener = bind("127.0.0.1", 0)
    try:
        port = listener.getsockname()[1]
        assert url_of(listener) == f"http://127.0.0.1:{port}"
        assert url_of(listener, tls=True) == f"https://127.0.0.1:{port}"
    finally:
        listener.close()


def never(url: str) -> ASGIApp:
    raise AssertionError("no app is made for a service whose certificate cannot be used")


def test_an_unusable_certificate_stops_the_service_before_it_listens(tmp_path: Path) -> None:
    tls = loopback_tls(tmp_path / "tls")
    other = loopback_tls(tmp_path / "other")  # a key that is not the certificate's
    url_file = tmp_path / "url"
    for cert, key in ((tls.cert, other.key), (tmp_path / "missing.pem", tls.key)):
        with pytest.raises(ConfigError, match=r"tls_cert .* cannot be used"):
            serve(never, "127.0.0.1", 0, url_file, tls_cert=cert, tls_key=key)
        assert not url_file.exists()


@pytest.mark.parametrize("model", [PoolConfig, FactoryConfig, FrontendConfig])
def test_tls_cert_and_key_go_together(model: type[BaseModel], tmp_path: Path) -> None:
    config = tmp_path / "service.yaml"
    config.write_text(f"tls_cert: {tmp_path / 'server.pem'}\n")
    with pytest.raises(ConfigError, match=r"tls_key: .*give both, or neither"):
        load_config(model, config)


def test_the_loopback_certificate_is_kept_while_valid_and_its_key_is_private(
    tmp_path: Path,
) -> None:
    first = loopback_tls(tmp_path / "tls")
    assert first.key.stat().st_mode & 0o077 == 0
    assert not list((tmp_path / "tls").glob("*ca*.key"))  # the CA's key is never written
    again = loopback_tls(tmp_path / "tls")
    assert again.cert.read_bytes() == first.cert.read_bytes()
    context = ssl.create_default_context(cafile=str(first.ca))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(first.cert, first.key)
    for name in ("127.0.0.1", "localhost"):  # a handshake in memory, as a client would
        client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = context.wrap_bio(client_in, client_out, server_hostname=name)
        srv = server.wrap_bio(server_in, server_out, server_side=True)
        for _ in range(10):
            for side in (client, srv):
                with contextlib.suppress(ssl.SSLWantReadError):
                    side.do_handshake()
            server_in.write(client_out.read())
            client_in.write(server_out.read())
        client.do_handshake()  # raises unless the certificate verified for `name`
