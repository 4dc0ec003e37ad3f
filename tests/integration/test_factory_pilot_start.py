"""What the factory hands a real pilot: the signed stage and the request's attributes.

The real factory app is served by uvicorn on a loopback port (a thread), its
local backend starts the real glidein_startup.sh, and the bootstrap verifies
the stage manifest's Ed25519 signature with openssl against the key the
factory passed in `--manifest-key`. The agent is a stub that copies the
glidein_config the bootstrap wrote and waits for a release file, so the test
sees exactly what the pilot was told. Every wait polls with a deadline.
"""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn
from fastapi.testclient import TestClient

from glidewms.config.factory import EntryConfig, FactoryConfig
from glidewms.factory.api import create_app
from glidewms.factory.stage import Stage, build_vo_stage
from glidewms.security.tokens import TokenIssuer, generate_keypair
from glidewms.service import bind, url_of
from tests import harness

T = TypeVar("T")
POOL_URL = "http://127.0.0.1:9"

STUB_AGENT = """\
import os, shutil, time
out = {out!r}
gid = dict(line.rstrip("\\n").split(" ", 1) for line in open("glidein_config"))["GLIDEIN_Id"]
shutil.copyfile("glidein_config", os.path.join(out, gid + ".config"))
while not os.path.exists(os.path.join(out, "release")):
    time.sleep(0.05)
"""


wait_for = partial(harness.wait_for, timeout=30.0, interval=0.05)


class Served:
    """The factory app on a real socket (pilots call it back over HTTP)."""

    def __init__(self, make_app: Callable[[str], Any]) -> None:
        self.sock = bind("127.0.0.1", 0)
        self.url = url_of(self.sock)
        self.app = make_app(self.url)
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> Served:
        self.thread.start()
        wait_for(lambda: self.server.started, "uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture
def out(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "out"
    directory.mkdir()
    yield directory
    (directory / "release").touch()


def signed_setup(tmp_path: Path, out: Path) -> tuple[Path, TokenIssuer, Path]:
    """Keys, a token issuer and a stub agent package for a real bootstrap run
    (which needs openssl to verify the stage's signature)."""
    if shutil.which("openssl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and openssl is missing: the bootstrap cannot verify signatures")
        pytest.skip("openssl is not installed: the bootstrap cannot verify signatures")
    private, public = generate_keypair(tmp_path / "keys")
    issuer = TokenIssuer.from_file(private)
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "__init__.py").write_text("")
    (agent / "__main__.py").write_text(STUB_AGENT.format(out=str(out)))
    return public, issuer, agent


def config_of(path: Path) -> dict[str, str]:
    return dict(line.rstrip("\n").split(" ", 1) for line in path.read_text().splitlines())


def test_pilot_verifies_the_signed_stage_and_gets_request_attributes(
    tmp_path: Path, out: Path
) -> None:
    public, issuer, agent = signed_setup(tmp_path, out)
    entry = EntryConfig(
        name="local", site="LOCAL", max_pilots=1, max_per_cycle=1, attributes={"HAS_X": True}
    )
    config = FactoryConfig(
        state_dir=tmp_path / "state", issuer_public_key=public, cycle_seconds=0.2, entries=[entry]
    )
    fe1 = {"Authorization": f"Bearer {issuer.issue('fe1', ['frontend'], 600)}"}
    start = 'TARGET.Owner == "alice" && TARGET.RequestCpus <= 1'

    def body(n: int, **extra: Any) -> dict[str, Any]:
        return {
            "pool_url": POOL_URL,
            "pilot_token": issuer.issue("pilot", ["pilot"], 600, fe="fe1", group="main"),
            "entries": {"local": {"idle": n, "max_running": n, **extra}},
        }

    with Served(lambda url: create_app(config, url, agent_dir=agent, kill_grace=2.0)) as served:
        factory = served.app.state.factory
        with TestClient(served.app) as client:
            bad = client.put(
                "/api/v1/requests/main", headers=fe1, json=body(1, start_expr="TARGET.Owner == ")
            )
            assert bad.status_code == 422 and "start_expr" in bad.text
            bad = client.put(
                "/api/v1/requests/main", headers=fe1, json=body(1, container_image="two words")
            )
            assert bad.status_code == 422 and "container_image" in bad.text
            image = "/cvmfs/unpacked.example.org/el9:latest"
            ok = client.put(
                "/api/v1/requests/main",
                headers=fe1,
                json=body(1, start_expr=start, container_image=image),
            )
            assert ok.status_code == 200, ok.text
            assert ok.json()["entries"]["local"]["start_expr"] == start

            first = wait_for(lambda: sorted(out.glob("*.config")), "the first pilot's agent")[0]
            seen = config_of(first)
            assert seen["GLIDEIN_Manifest_Signature"] == "verified"
            assert seen["GLIDEIN_Start"] == start
            assert seen["GLIDEIN_Container_Image"] == image
            assert seen["HAS_X"] == "true"
            assert set(seen["GLIDEIN_Attrs"].split(",")) == {
                "HAS_X",
                "GLIDEIN_Start",
                "GLIDEIN_Container_Image",
            }

            # A stage signature that is not the factory's: the next pilot refuses it.
            signature = factory.stage.signature_path
            signature.write_bytes(bytes(64))
            (out / "release").touch()

            def corrupt() -> list[Any]:
                return factory.store.glideins(exit_reason="corruption")

            [refused] = wait_for(corrupt, "a pilot to refuse the tampered signature")[:1]
            client.put("/api/v1/requests/main", headers=fe1, json=body(0))
            assert not (out / f"{refused.glidein_id}.config").exists(), "the agent never ran"
            assert refused.report is not None
            assert "signature does not verify" in refused.report["detail"]
            assert refused.exit_code == 3


class VoStageServer:
    """Stand-in for the frontend's read-only VO stage server (the frontend serves the
    real one): `BASE/manifest` and `BASE/files/PATH` of a stage `build_vo_stage` built."""

    def __init__(self, stage: Stage, prefix: str) -> None:
        def handler(*args: Any) -> http.server.BaseHTTPRequestHandler:
            return _VoHandler(stage, prefix, *args)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}{prefix}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> VoStageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _VoHandler(http.server.BaseHTTPRequestHandler):
    def __init__(self, stage: Stage, prefix: str, *args: Any) -> None:
        self.stage, self.prefix = stage, prefix
        super().__init__(*args)

    def do_GET(self) -> None:  # the http.server API's name
        path = self.path.removeprefix(self.prefix)
        found = (
            self.stage.manifest_path
            if path == "/manifest"
            else self.stage.file(path.removeprefix("/files/"))
        )
        if found is None or not found.is_file():
            self.send_error(404)
            return
        data = found.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_pilot_gets_the_vo_stage_and_its_entry_token_renewed_in_place(
    tmp_path: Path, out: Path
) -> None:
    """The request's vo_stage reaches the real bootstrap as --vo-* options: it fetches and
    verifies the VO stage (signature `verified` in glidein_config). The entry's own token
    is the pilot's token file, and a renewed one replaces it where the pilot reads it."""
    public, issuer, agent = signed_setup(tmp_path, out)
    scripts = tmp_path / "vo-src"
    scripts.mkdir()
    (scripts / "scripts.list").write_text("group check_vo.sh\n")
    (scripts / "check_vo.sh").write_text("#!/bin/bash\nexit 0\n")
    vo = build_vo_stage(scripts, tmp_path / "vo-out", tmp_path / "fe-keys" / "vo.pem")
    entry = EntryConfig(name="local", site="LOCAL", max_pilots=1, max_per_cycle=1)
    config = FactoryConfig(
        state_dir=tmp_path / "state", issuer_public_key=public, cycle_seconds=0.2, entries=[entry]
    )
    fe1 = {"Authorization": f"Bearer {issuer.issue('fe1', ['frontend'], 600)}"}

    def entry_token() -> str:
        return issuer.issue("pilot", ["pilot"], 600, fe="fe1", group="main", entry="local")

    def make_app(url: str) -> Any:
        return create_app(config, url, agent_dir=agent, kill_grace=2.0)

    with (
        VoStageServer(vo, "/stage/vo/main") as server,
        Served(make_app) as served,
        TestClient(served.app) as client,
    ):
        vo_stage = {
            "url": server.url,
            "manifest_sha256": vo.manifest_sha256,
            "manifest_key": vo.public_key_b64,
        }

        def put(n: int, token: str, **extra: Any) -> Any:
            return client.put(
                "/api/v1/requests/main",
                headers=fe1,
                json={
                    "pool_url": POOL_URL,
                    "vo_stage": vo_stage,
                    **extra,
                    "entries": {"local": {"idle": n, "max_running": n, "pilot_token": token}},
                },
            )

        first_token = entry_token()
        ok = put(1, first_token)
        assert ok.status_code == 200, ok.text
        assert ok.json()["vo_stage"] == vo_stage
        assert "pilot_token" not in ok.json()["entries"]["local"]
        config_file = wait_for(lambda: sorted(out.glob("*.config")), "the pilot's agent")[0]
        seen = config_of(config_file)
        assert seen["GLIDEIN_VO_Manifest_Signature"] == "verified"
        assert seen["GLIDEIN_VO_Scripts"] == "vo/scripts.list"
        assert seen["GLIDEIN_Manifest_Signature"] == "verified"
        token_path = Path(seen["GLIDEIN_Token_File"])
        assert token_path.read_text().strip() == first_token
        assert token_path.name == "main+local.token"

        renewed = entry_token()
        assert renewed != first_token
        assert put(1, renewed).status_code == 200
        assert token_path.read_text().strip() == renewed  # what the running pilot reads next
        bad = put(
            1, issuer.issue("pilot", ["pilot"], 600, fe="fe1", group="main", entry="elsewhere")
        )
        assert bad.status_code == 422 and "entry claim" in bad.text
        assert token_path.read_text().strip() == renewed
        put(0, renewed)
