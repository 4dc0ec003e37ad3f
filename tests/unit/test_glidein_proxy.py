"""HTTP proxy (squid) detection, and every pilot download going through the proxy.

The proxy is a STAND-IN for a site's squid: `tests/components/glidein_http_proxy.py`,
a small forwarding proxy on loopback that records what it forwarded. The
bootstrap's downloads are checked with curl and with the python fallback.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from glidewms.glidein.agent import cvmfs, validation
from glidewms.glidein.agent.http import Api
from glidewms.glidein.validation import checks
from tests.components.glidein_http_proxy import HttpProxy
from tests.unit.test_bootstrap import (  # noqa: F401 (fixtures)
    STUB_STAGE,
    StageServer,
    bootstrap,
    downloader,
    finish,
    token_file,
)
from tests.unit.test_glidein_agent import TOKEN, FakePool
from tests.unit.test_glidein_cvmfs import GLIDEIN


@pytest.fixture
def proxy() -> Iterator[HttpProxy]:
    with HttpProxy() as running:
        yield running


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*checks.PROXY_ENV, "no_proxy", "NO_PROXY", "OSG_SQUID_LOCATION"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("configured", "env", "expected"),
    [
        ("", {}, ("", "none")),
        ("auto", {"http_proxy": "http://squid:3128"}, ("http://squid:3128", "http_proxy")),
        ("", {"HTTPS_PROXY": "squid.site:8080"}, ("http://squid.site:8080", "HTTPS_PROXY")),
        (
            "",
            {"OSG_SQUID_LOCATION": "squid.osg:3128"},
            ("http://squid.osg:3128", "OSG_SQUID_LOCATION"),
        ),
        ("", {"OSG_SQUID_LOCATION": "UNAVAILABLE"}, ("", "none")),
        ("http://mine:1", {"http_proxy": "http://env:2"}, ("http://mine:1", "GLIDEIN_Proxy")),
        ("none", {"http_proxy": "http://env:2"}, ("", "GLIDEIN_Proxy")),
    ],
)
def test_find_proxy(configured: str, env: dict[str, str], expected: tuple[str, str]) -> None:
    assert checks.find_proxy(configured, env) == expected


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://squid:3128", ("squid", 3128)),
        ("http://user:pw@squid.site:8080/", ("squid.site", 8080)),
        ("http://squid", ("squid", 3128)),
        ("http://[::1]:3129", ("::1", 3129)),
    ],
)
def test_proxy_address(url: str, address: tuple[str, int]) -> None:
    assert checks.proxy_address(url) == address


def test_a_bad_proxy_port_is_refused_without_showing_credentials() -> None:
    with pytest.raises(ValueError, match="bad port") as info:
        checks.proxy_address("http://user:s3cret@squid:abc")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pw@squid:3128", "http://squid:3128"),
        ("http://user:pw@squid:3128/path", "http://squid:3128/path"),
        ("http://squid:3128", "http://squid:3128"),
    ],
)
def test_redact_proxy(url: str, shown: str) -> None:
    assert checks.redact_proxy(url) == shown


# --------------------------------------------------------------------------- the script


def run_proxy_script(tmp_path: Path, **config: str) -> tuple[validation.Result, dict[str, str]]:
    config_path = tmp_path / "glidein_config"
    config_path.write_text("".join(f"{k} {v}\n" for k, v in config.items()))
    result = validation.run_script(
        validation.Script("proxy", str(GLIDEIN / "validation" / "proxy.py"), "factory"),
        str(config_path),
        timeout=60,
    )
    return result, validation.read_values(str(config_path))


def test_a_configured_proxy_is_checked_and_published_without_credentials(
    tmp_path: Path, proxy: HttpProxy, clean_proxy_env: None
) -> None:
    with_password = proxy.url.replace("http://", "http://pilot:s3cret@")
    result, got = run_proxy_script(tmp_path, GLIDEIN_Proxy=with_password)
    assert result.ok, result
    assert (got["HAS_HTTP_PROXY"], got["GLIDEIN_Proxy_URL"], got["GLIDEIN_Proxy_Source"]) == (
        "true",
        proxy.url,
        "GLIDEIN_Proxy",
    )
    assert "s3cret" not in result.detail + result.output
    assert got["http_proxy"] == with_password and result.job_env == ["http_proxy", "https_proxy"]
    attrs, _ = validation.published(got, [result])
    assert "s3cret" not in str(attrs)


def test_the_environment_proxy_is_found_and_a_dead_one_is_a_network_failure(
    tmp_path: Path, proxy: HttpProxy, clean_proxy_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", proxy.url)
    result, got = run_proxy_script(tmp_path)
    assert result.ok and got["GLIDEIN_Proxy_Source"] == "http_proxy"
    assert result.job_env == []  # the environment's proxy reaches jobs by itself
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("http_proxy", "")
    monkeypatch.setenv("OSG_SQUID_LOCATION", dead)
    result, _ = run_proxy_script(tmp_path)
    assert (result.status, result.category) == ("failed", "Network")
    assert "OSG_SQUID_LOCATION" in result.detail
    result, got = run_proxy_script(tmp_path, GLIDEIN_Proxy="none")
    assert result.ok and got["HAS_HTTP_PROXY"] == "false"


# --------------------------------------------------------------------------- downloads


def test_the_bootstrap_downloads_the_stage_through_the_proxy(
    tmp_path: Path,
    token_file: Path,  # noqa: F811
    downloader: dict[str, str],  # noqa: F811
    proxy: HttpProxy,
) -> None:
    stage = StageServer(STUB_STAGE)
    try:
        rc, stderr = finish(
            bootstrap(stage, tmp_path, token_file, {**downloader, "http_proxy": proxy.url})
        )
    finally:
        stage.close()
    assert rc == 7, stderr  # the stub agent ran: every file arrived and checked out
    assert f"{stage.url}/api/v1/stage/manifest" in proxy.urls
    assert f"{stage.url}/api/v1/stage/files/agent/__main__.py" in proxy.urls


def test_the_agent_fetches_sandboxes_through_the_proxy(
    tmp_path: Path, proxy: HttpProxy, clean_proxy_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", proxy.url)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    with FakePool() as pool:
        digest = pool.add_file(b"input data\n")
        Api(pool.url, str(token)).download(f"files/{digest}", str(tmp_path / "in"), digest)
        assert f"{pool.url}/api/v1/files/{digest}" in proxy.urls
    assert (tmp_path / "in").read_bytes() == b"input data\n"


def test_cvmfs_images_are_downloaded_through_the_proxy(
    tmp_path: Path, proxy: HttpProxy, clean_proxy_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "sw.example.org.sqfs").write_bytes(b"hsqs image bytes")
    handler: Any = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("http_proxy", proxy.url)
        origin = f"http://127.0.0.1:{server.server_address[1]}/images"
        (served / "images").mkdir()
        os.rename(served / "sw.example.org.sqfs", served / "images" / "sw.example.org.sqfs")
        path = cvmfs.fetch_image(origin, "sw.example.org", str(tmp_path / "new" / "dir"))
    finally:
        server.shutdown()
        server.server_close()
    assert Path(path).read_bytes() == b"hsqs image bytes"
    assert proxy.urls == [f"{origin}/sw.example.org.sqfs"]
