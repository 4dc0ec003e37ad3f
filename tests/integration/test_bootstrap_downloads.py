"""The bootstrap's downloads retry with back-off and go through the site's HTTP proxy.

The stage server is `FlakyStage`: the factory's stage stand-in of
tests/unit/test_bootstrap.py answering 503 to the first two requests of every
path, as an overloaded factory behind a load balancer does. The proxy is the
loopback STAND-IN for a site squid (tests/components/glidein_http_proxy.py).
Both downloaders: curl, and the python fallback of a node without curl.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.components.glidein_http_proxy import HttpProxy
from tests.unit.test_bootstrap import (  # noqa: F401 (fixtures)
    STUB_STAGE,
    StageServer,
    bootstrap,
    downloader,
    finish,
    token_file,
)

FAILURES = 2


class FlakyStage(StageServer):
    """Fails the first FAILURES requests of each path with 503, then serves it."""

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(files)
        self.seen: Counter[str] = Counter()

    def handle(self, h: Any, method: str) -> None:
        self.seen[h.path] += 1
        if h.path.startswith("/api/v1/stage/") and self.seen[h.path] <= FAILURES:
            h.rfile.read(int(h.headers.get("Content-Length") or 0))
            return self.send(h, 503, b'{"detail": "busy"}')
        return super().handle(h, method)


@pytest.fixture
def proxy() -> Iterator[HttpProxy]:
    with HttpProxy() as running:
        yield running


def test_downloads_retry_through_the_proxy_until_the_stage_answers(
    tmp_path: Path,
    token_file: Path,  # noqa: F811
    downloader: dict[str, str],  # noqa: F811
    proxy: HttpProxy,
) -> None:
    stage = FlakyStage(STUB_STAGE)
    try:
        rc, stderr = finish(
            bootstrap(stage, tmp_path, token_file, {**downloader, "http_proxy": proxy.url})
        )
    finally:
        stage.close()
    assert rc == 7, stderr  # the stub agent ran: every file arrived and checked out
    wanted = ["/api/v1/stage/manifest", *(f"/api/v1/stage/files/{path}" for path in STUB_STAGE)]
    assert {path: stage.seen[path] for path in wanted} == {p: FAILURES + 1 for p in wanted}
    for path in wanted:  # every attempt went through the proxy
        assert [u for u in proxy.urls if u == stage.url + path] == [stage.url + path] * 3


def test_a_stage_that_never_answers_ends_the_pilot_with_a_clear_error(
    tmp_path: Path,
    token_file: Path,  # noqa: F811
    downloader: dict[str, str],  # noqa: F811
) -> None:
    stage = FlakyStage(STUB_STAGE)
    stage.seen.update({"/api/v1/stage/manifest": -100})  # fails far more than it retries
    try:
        rc, stderr = finish(
            bootstrap(stage, tmp_path, token_file, downloader, extra=("--outage-tolerance", "4"))
        )
    finally:
        stage.close()
    assert rc == 1, stderr
    assert "manifest download failed" in stderr
    assert "giving up after" in stderr and "HTTP 503" in stderr
    assert stage.seen["/api/v1/stage/manifest"] + 100 > 1  # retried, then gave up
    assert list((tmp_path / "scratch").iterdir()) == []


def test_the_pilot_rides_out_a_factory_outage(
    tmp_path: Path,
    token_file: Path,  # noqa: F811
    downloader: dict[str, str],  # noqa: F811
) -> None:
    """The factory is down (nothing listens on its port) when the pilot starts
    and comes back after the pilot has retried twice: the pilot goes on."""
    down = StageServer(STUB_STAGE)
    port = down.server.server_address[1]
    down.close()
    proc = bootstrap(down, tmp_path, token_file, downloader)
    assert proc.stderr is not None
    lines: list[str] = []
    retried = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if sum("no answer" in seen for seen in lines) >= 2:
                retried.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    back: StageServer | None = None
    try:
        assert retried.wait(60), "".join(lines)
        back = StageServer(STUB_STAGE, port=port)
        assert proc.wait(60) == 7, "".join(lines)  # the stub agent ran: the stage arrived
    finally:
        proc.kill()
        if back is not None:
            back.close()
    reader.join(10)
    assert "manifest download failed" not in "".join(lines)


class CutStage(StageServer):
    """The factory killed mid-answer: the first request of each stage file gets a
    200 whose body stops halfway (the connection closes), then the file is served.
    Found by tests/e2e/test_chaos.py: the cut file counted as received, and the
    pilot ended with `corruption` for what was an outage."""

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(files)
        self.seen: Counter[str] = Counter()

    def handle(self, h: Any, method: str) -> None:
        self.seen[h.path] += 1
        prefix = "/api/v1/stage/files/"
        if h.path.startswith(prefix) and self.seen[h.path] == 1:
            body = self.files[h.path[len(prefix) :]]
            h.send_response(200)
            h.send_header("Content-Length", str(len(body) + 100))
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return None
        return super().handle(h, method)


def test_a_stage_file_cut_mid_answer_is_fetched_again_not_called_corruption(
    tmp_path: Path,
    token_file: Path,  # noqa: F811
    downloader: dict[str, str],  # noqa: F811
) -> None:
    stage = CutStage(STUB_STAGE)
    try:
        rc, stderr = finish(bootstrap(stage, tmp_path, token_file, downloader))
    finally:
        stage.close()
    assert rc == 7, stderr  # the stub agent ran: every file arrived whole and checked out
    assert "corruption" not in stderr
    for path in STUB_STAGE:
        assert stage.seen[f"/api/v1/stage/files/{path}"] == 2
