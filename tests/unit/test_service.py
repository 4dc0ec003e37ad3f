"""The uvicorn wrapper's socket: what asyncio does with it matters for latency."""

from __future__ import annotations

import asyncio
import socket

from glidewms.service import bind


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
