"""Transport (issue 11), the gate: the token is checked and the body bounded
before a body is read (security/asgi.py).

The attacks are replayed against a real pool process over raw sockets, so a
test knows exactly how many bytes the server could have received when it
answered: a 50 MB body refused after 64 KiB of it were sent was refused
without being read. TLS is in test_transport_tls.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from glidewms.client import ClientSettings, PoolClient
from glidewms.config.factory import FactoryConfig
from glidewms.config.frontend import FrontendConfig
from glidewms.config.pool import PoolConfig
from glidewms.factory.api import create_app as factory_app
from glidewms.frontend.api import create_app as frontend_app
from glidewms.pool.api import create_app as pool_app
from glidewms.protocol import VERSION_HEADER
from glidewms.security.asgi import Gate, GatePolicy
from glidewms.security.tokens import TokenIssuer, generate_keypair
from tests.harness import wait_for

MB = 1024 * 1024
CAPS = {"max_body_bytes": 64 * 1024, "max_submit_bytes": 256 * 1024, "max_upload_bytes": MB}


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys")


@pytest.fixture
def issuer(keys: tuple[Path, Path]) -> TokenIssuer:
    return TokenIssuer.from_file(keys[0])


@pytest.fixture
def pool_process(tmp_path: Path, keys: tuple[Path, Path]) -> Iterator[str]:
    """A real pool (`glidewms pool --config`) with small body caps; its URL."""
    config = tmp_path / "pool.yaml"
    url_file = tmp_path / "pool.url"
    settings = {"listen_port": 0, "state_dir": str(tmp_path / "pool"), "url_file": str(url_file)}
    settings.update(issuer_public_key=str(keys[1]), **CAPS)
    config.write_text(yaml.safe_dump(settings))
    log = open(tmp_path / "pool.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, "-m", "glidewms", "pool", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: url_file.is_file() or process.poll() is not None, "the pool's URL", 60)
        assert process.poll() is None, (tmp_path / "pool.log").read_text()
        yield url_file.read_text().strip()
    finally:
        process.terminate()
        process.wait(30)
        log.close()


class Raw:
    """One HTTP/1.1 exchange on a bare socket: the test decides how much of
    the body is ever sent."""

    def __init__(self, url: str) -> None:
        host, port = url.split("//")[1].split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=20)
        self.sent = 0

    def send_head(self, method: str, path: str, headers: dict[str, str]) -> None:
        lines = [
            f"{method} {path} HTTP/1.1",
            "Host: pool",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def response(self) -> tuple[int, dict[str, str], Any]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed before an answer: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
        while len(body) < int(headers["content-length"]):
            body += self.sock.recv(65536)
        return int(status_line.split()[1]), headers, json.loads(body)

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def healthy(url: str, token: str) -> bool:
    auth = {"Authorization": f"Bearer {token}"}
    return (
        httpx.get(f"{url}/healthz").status_code == 200
        and httpx.get(f"{url}/api/v1/jobs", headers=auth).status_code == 200
    )


@pytest.mark.parametrize(
    ("authorization", "detail"),
    [(None, "missing bearer token"), ("Bearer not-a-jwt", "invalid token: ")],
)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_unauthenticated_50_mb_post_gets_401_before_its_body_is_read(
    pool_process: str, issuer: TokenIssuer, authorization: str | None, detail: str, framing: str
) -> None:
    raw = Raw(pool_process)
    headers = {"Content-Type": "application/json"}
    headers.update(
        {"Content-Length": str(50 * MB)}
        if framing == "content-length"
        else {"Transfer-Encoding": "chunked"}
    )
    if authorization:
        headers["Authorization"] = authorization
    raw.send_head("POST", "/api/v1/jobs", headers)
    first = b"x" * 65536
    raw.send(first if framing == "content-length" else b"%x\r\n%s\r\n" % (len(first), first))
    status, answer_headers, body = raw.response()
    # answered having been sent 64 KiB of the 50 MB: it read at most that
    assert raw.sent <= 65536 + 16
    assert status == 401 and body["detail"].startswith(detail)
    assert answer_headers["www-authenticate"] == "Bearer"
    assert answer_headers[VERSION_HEADER.lower()]
    assert answer_headers["connection"] == "close" and raw.closed_by_server()
    assert healthy(pool_process, issuer.issue("alice", ["user"]))


def test_an_authenticated_body_over_its_cap_gets_413_at_once(
    pool_process: str, issuer: TokenIssuer
) -> None:
    token = issuer.issue("alice", ["user"])
    raw = Raw(pool_process)
    raw.send_head(
        "POST",
        "/api/v1/jobs",
        {"Authorization": f"Bearer {token}", "Content-Length": str(50 * MB)},
    )
    status, headers, body = raw.response()
    assert raw.sent == 0  # not a byte of the body was needed
    assert status == 413 and "max_submit_bytes" in body["detail"]
    assert headers["connection"] == "close" and raw.closed_by_server()
    assert healthy(pool_process, token)


def test_a_chunked_upload_is_cut_off_when_it_passes_its_cap(
    pool_process: str, issuer: TokenIssuer
) -> None:
    token = issuer.issue("alice", ["user"])
    raw = Raw(pool_process)
    raw.send_head(
        "PUT",
        "/api/v1/files/" + "0" * 64,
        {"Authorization": f"Bearer {token}", "Transfer-Encoding": "chunked"},
    )
    chunk = b"%x\r\n%s\r\n" % (16384, b"y" * 16384)
    stopped: list[BaseException] = []

    def keep_sending() -> None:
        try:
            for _ in range(50 * MB // 16384):
                raw.send(chunk)
        except OSError as exc:  # the server hung up: what the test wants
            stopped.append(exc)

    sender = threading.Thread(target=keep_sending)
    sender.start()
    status, _, body = raw.response()
    sender.join(60)
    assert status == 413 and "max_upload_bytes" in body["detail"]
    assert stopped, "the whole 50 MB went in: the server kept reading"
    assert healthy(pool_process, token)


def test_named_routes_take_bodies_larger_than_the_default_cap(
    pool_process: str, issuer: TokenIssuer, tmp_path: Path
) -> None:
    auth = {"Authorization": f"Bearer {issuer.issue('alice', ['user'])}"}
    upload = tmp_path / "input.bin"
    upload.write_bytes(b"z" * (512 * 1024))  # > max_body_bytes, < max_upload_bytes
    alice = tmp_path / "alice.token"
    alice.write_text(auth["Authorization"].split()[1])
    with PoolClient(ClientSettings(pool_process, alice)) as client:
        client.upload(upload)
    edit = {"job_ids": ["1.0"] * 20000, "attribute": "Foo", "value": "1"}  # ~140 KB
    r = httpx.post(f"{pool_process}/api/v1/jobs/edit", json=edit, headers=auth)
    assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]


# ------------------------------------------------------------- in-process


def apps(tmp_path: Path, public_key: Path) -> dict[str, Any]:
    return {
        "pool": pool_app(PoolConfig(state_dir=tmp_path / "pool", issuer_public_key=public_key)),
        "factory": factory_app(
            FactoryConfig(state_dir=tmp_path / "factory", issuer_public_key=public_key), "http://f"
        ),
        "frontend": frontend_app(
            FrontendConfig(state_dir=tmp_path / "frontend", issuer_public_key=public_key),
            "token",
            loop=False,
        ),
    }


def policy_of(app: Any) -> GatePolicy:
    (gate,) = [m for m in app.user_middleware if m.cls is Gate]
    policy: GatePolicy = gate.kwargs["policy"]
    return policy


def test_public_routes_are_exactly_those_without_a_token_dependency(tmp_path, keys) -> None:
    """The gate's declarations agree with the routes: an operation whose schema
    names no bearer token is public, every other one is closed at the gate."""
    for name, app in apps(tmp_path, keys[1]).items():
        policy = policy_of(app)
        for path, operations in app.openapi()["paths"].items():
            concrete = path.replace("{", "").replace("}", "")
            for method, operation in operations.items():
                public = policy.is_public(method.upper(), concrete)
                assert public == (not operation.get("security")), (name, method, path)
        with TestClient(app) as client:
            for path in ("/healthz", "/openapi.json", "/docs"):
                assert client.get(path).status_code == 200, (name, path)
            assert client.get("/no/such/route").status_code == 401  # closed by default
    frontend = apps(tmp_path / "again", keys[1])["frontend"]
    with TestClient(frontend) as client:  # pilots fetch VO stages without a token
        assert client.get("/stage/vo/main/manifest").status_code == 404


def test_the_route_takes_the_identity_the_gate_verified(tmp_path, keys, issuer) -> None:
    app = pool_app(PoolConfig(state_dir=tmp_path / "pool", issuer_public_key=keys[1]))
    with TestClient(app) as client:
        verifier = app.state.verifier
        calls: list[str] = []
        real = verifier.verify
        verifier.verify = lambda token: calls.append(token) or real(token)
        user = {"Authorization": f"Bearer {issuer.issue('alice', ['user'])}"}
        assert client.get("/api/v1/jobs", headers=user).status_code == 200
        assert len(calls) == 1  # the gate's check; the route did not verify again
        pilot = {"Authorization": f"Bearer {issuer.issue('p', ['pilot'])}"}
        r = client.get("/api/v1/jobs", headers=pilot)
        assert r.status_code == 403 and "lacks scope" in r.json()["detail"]
