"""The pilot's retries: capped exponential back-off with jitter, Retry-After,
and patience (riding out an outage for a time, not a number of tries).

The services are loopback HTTP servers that fail on purpose: a stand-in for a
pool that is restarting (503 + Retry-After), overloaded (429) or gone (no
listener on its port).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from glidewms.glidein.agent.http import (
    RETRY_AFTER_CAP,
    RETRY_CAP,
    Api,
    HttpStatusError,
    TransportError,
    retry_after_of,
    retry_delay,
)


def highest(low: float, high: float) -> float:
    return high


def lowest(low: float, high: float) -> float:
    return low


@pytest.mark.parametrize(
    ("attempt", "retry_after", "draw", "expected"),
    [
        (1, None, highest, 1.0),
        (1, None, lowest, 0.5),  # jitter: anywhere in [d/2, d]
        (3, None, highest, 4.0),
        (7, None, highest, RETRY_CAP),  # capped
        (200, None, highest, RETRY_CAP),  # no overflow however long the outage
        (1, 30.0, highest, 30.0),  # the server asked for longer: honoured
        (7, 5.0, highest, RETRY_CAP),  # ...but never shortens the back-off
        (1, 10_000.0, highest, RETRY_AFTER_CAP),  # ...within a limit
    ],
)
def test_retry_delay(attempt: int, retry_after: float | None, draw: Any, expected: float) -> None:
    assert retry_delay(attempt, 1.0, retry_after, draw) == expected


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), (" 12 ", 12.0), ("", None), ("soon", None), ("1" * 9, None), (None, None)],
)
def test_retry_after_header(header: str | None, seconds: float | None) -> None:
    assert retry_after_of({} if header is None else {"Retry-After": header}) == seconds


class Flaky:
    """Answers `failures` requests with `status` (and Retry-After), then 200."""

    def __init__(self, failures: int, status: int = 503, retry_after: str | None = None) -> None:
        self.left = failures
        self.seen = 0
        box = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                box.seen += 1
                if box.left > 0:
                    box.left -= 1
                    body = b'{"detail": "busy"}'
                    self.send_response(status)
                    if retry_after is not None:
                        self.send_header("Retry-After", retry_after)
                else:
                    body = b'{"pilot_id": "p1"}'
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("t0k3n\n")
    return path


@pytest.fixture
def flaky() -> Iterator[Flaky]:
    server = Flaky(6)
    yield server
    server.close()


def test_patience_outlasts_the_number_of_tries(flaky: Flaky, token_file: Path) -> None:
    """Six failures: three tries give up, patience of a minute gets through."""
    with pytest.raises(HttpStatusError) as failed:
        Api(flaky.url, str(token_file), backoff=0.01).call("POST", "pilots", {}, tries=3)
    assert failed.value.status == 503 and flaky.seen == 3
    flaky.left = 6
    api = Api(flaky.url, str(token_file), backoff=0.01)
    assert api.call("POST", "pilots", {}, patience=60)[1] == {"pilot_id": "p1"}
    assert flaky.seen == 3 + 7


def test_patience_ends(token_file: Path) -> None:
    """A service that never comes back: the call ends once the next try would
    start later than `patience` after the first."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api = Api(f"http://127.0.0.1:{port}", str(token_file), backoff=0.05)
    with pytest.raises(TransportError):
        api.call("POST", "pilots", {}, patience=0.5)


def test_retry_after_is_honoured(token_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = Flaky(1, status=429, retry_after="1")
    try:
        api = Api(server.url, str(token_file), backoff=0.01)
        with caplog.at_level(logging.WARNING):
            assert api.call("POST", "pilots", {}, tries=2)[1] == {"pilot_id": "p1"}
    finally:
        server.close()
    assert "HTTP 429" in caplog.text and "in 1.0s" in caplog.text


def test_a_refusal_is_final_at_once(token_file: Path) -> None:
    server = Flaky(5, status=403)
    try:
        with pytest.raises(HttpStatusError) as refused:
            Api(server.url, str(token_file), backoff=0.01).call("POST", "pilots", {}, patience=60)
    finally:
        server.close()
    assert refused.value.status == 403 and server.seen == 1


def test_the_final_report_waits_for_a_factory_that_comes_back(token_file: Path) -> None:
    """A pilot that fails validation while its factory restarts: the trail's
    flush gives up (best effort), the final report is sent once the factory
    answers (entry health counts the failure only from that report)."""
    from glidewms.glidein.agent.trail import Trail

    factory = Flaky(5)  # 2 for the flush (given up), then 3 more before the report lands
    try:
        trail = Trail(Api(factory.url, str(token_file), backoff=0.01), "g-1")
        trail.report({"exit_reason": "validation_failed", "exit_code": 4, "detail": "os"})
    finally:
        factory.close()
    assert factory.left == 0 and factory.seen == 6  # the 6th call, the report, got its 200
