"""Transport (issue 11), TLS: every service, client and pilot can speak it.

The whole system runs with `glidewms up --tls` and a job goes through a real
pilot; a client, a bootstrap or an agent without the CA is refused. The
bootstrap's and the agent's stand-in server is the bootstrap tests'
`StageServer`, moved behind TLS.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from glidewms.client import ClientError, ClientSettings, PoolClient
from glidewms.config.factory import EntryConfig, FactoryConfig
from glidewms.factory.api import create_app as factory_app
from glidewms.factory.pilot_args import pilot_arguments
from glidewms.factory.stage import Stage
from glidewms.factory.store import StoredRequest
from glidewms.glidein.agent.http import Api, HttpStatusError, TransportError
from glidewms.launcher import Installation, Options
from glidewms.security.tls import LoopbackTls, client_context, loopback_tls
from glidewms.security.tokens import generate_keypair
from glidewms.submit import parse_submit
from tests.harness import SYSTEM_SETTINGS, kill_leftover_pilots, wait_for
from tests.unit.test_bootstrap import (  # the bootstrap tests' stand-ins and fixtures
    STUB_STAGE,
    StageServer,
    bootstrap,
    downloader,  # noqa: F401
    finish,
    sha,
    token_file,  # noqa: F401
)

JOB = '#!/bin/sh\necho "over tls $1" > "result_$1.txt"\n'
SUBMIT = """executable = job.sh
arguments = $(Process)
output = out_$(Process).txt
transfer_output_files = result_$(Process).txt
request_memory = 32
queue 2
"""


def test_the_whole_system_runs_a_job_through_a_pilot_over_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inst = Installation(Options(state_dir=tmp_path / "state", tls=True, **SYSTEM_SETTINGS))
    inst.prepare()
    try:
        inst.start()
        urls = {name: running.url for name, running in inst.services.items()}
        assert all(url.startswith("https://127.0.0.1:") for url in urls.values()), urls
        monkeypatch.setenv("GLIDEWMS_STATE", str(inst.root))  # client.json names the CA
        (tmp_path / "job.sh").write_text(JOB)
        (tmp_path / "job.sh").chmod(0o755)
        with PoolClient(ClientSettings.discover()) as client:
            ids = client.submit(parse_submit(SUBMIT, "tls.sub", tmp_path))["job_ids"]
            wait_for(
                lambda: all(client.job(j)["state"] == "completed" for j in ids), "jobs to complete"
            )
            for jid in ids:
                n = jid.split(".")[1]
                files = client.fetch_outputs(jid, tmp_path / "out" / jid)
                assert {p.name: p.read_text() for p in files}[
                    f"result_{n}.txt"
                ] == f"over tls {n}\n"
        admin = {"Authorization": f"Bearer {inst.token_file('admin').read_text().strip()}"}
        glideins = httpx.get(
            f"{urls['factory']}/api/v1/glideins", headers=admin, verify=client_context(inst.ca_file)
        ).json()
        assert glideins and {g["frontend"] for g in glideins} == {"frontend"}

        # without the CA: the system store does not know it, and nothing is sent
        stranger = ClientSettings(urls["pool"], inst.token_file("user"))
        with PoolClient(stranger) as client, pytest.raises(ClientError, match="CERTIFICATE_VERIFY"):
            client.jobs()
        with pytest.raises(httpx.HTTPError):  # nor does plain HTTP reach an HTTPS port
            httpx.get(urls["pool"].replace("https", "http") + "/healthz")
    finally:
        inst.stop()
        kill_leftover_pilots(inst)


@pytest.fixture
def tls(tmp_path: Path) -> LoopbackTls:
    return loopback_tls(tmp_path / "tls")


def serve_tls(stage: Any, tls: LoopbackTls) -> Any:
    """The bootstrap tests' stage stand-in, moved behind TLS with `tls`'s certificate."""
    stage.server.shutdown()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    server = stage.server
    server.socket = context.wrap_socket(
        server.socket, server_side=True, do_handshake_on_connect=False
    )
    stage.url = stage.url.replace("http://", "https://")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return stage


@pytest.mark.parametrize("with_ca", [True, False])
def test_the_bootstrap_verifies_the_factory_with_the_ca_it_was_given(
    tmp_path: Path,
    tls: LoopbackTls,
    with_ca: bool,
    downloader: dict[str, str],  # noqa: F811
    token_file: Path,  # noqa: F811
) -> None:
    stage = serve_tls(StageServer(STUB_STAGE), tls)
    try:
        ca = base64.b64encode(tls.ca.read_bytes()).decode()
        extra = ("--ca-cert", ca) if with_ca else ()
        rc, stderr = finish(bootstrap(stage, tmp_path, token_file, downloader, extra=extra))
    finally:
        stage.close()
    if with_ca:
        assert rc == 7, stderr  # the stub agent ran: the stage came over TLS
        config = json.loads((tmp_path / "marker").read_text())["config"]
        ca_line = next(line for line in config.splitlines() if line.startswith("GLIDEIN_CA_File"))
        assert Path(ca_line.split(" ", 1)[1]).name == "ca.pem"
    else:
        assert rc == 1 and "manifest download failed" in stderr
        assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("with_ca", [True, False])
def test_the_agent_verifies_services_with_its_ca_file(
    tmp_path: Path,
    tls: LoopbackTls,
    with_ca: bool,
    token_file: Path,  # noqa: F811
) -> None:
    stage = serve_tls(StageServer(STUB_STAGE), tls)
    try:
        api = Api(stage.url, str(token_file), ca_file=str(tls.ca) if with_ca else None)
        manifest = tmp_path / "manifest"
        if with_ca:  # both the kept connection (JSON) and urllib's (downloads) verify
            with pytest.raises(HttpStatusError, match="HTTP 404"):
                api.call("GET", "no-such-thing", tries=1)
            api.download("stage/manifest", str(manifest), sha(stage.manifest), tries=1)
            assert manifest.read_bytes() == stage.manifest
        else:
            with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
                api.call("GET", "no-such-thing", tries=1)
            with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
                api.download("stage/manifest", str(manifest), sha(stage.manifest), tries=1)
    finally:
        stage.close()


def test_factory_pilots_are_given_the_factorys_ca_bundle(tls: LoopbackTls) -> None:
    args = pilot_args_for(ca_file=tls.ca)
    assert base64.b64decode(args[args.index("--ca-cert") + 1]) == tls.ca.read_bytes()
    assert "--ca-cert" not in pilot_args_for(ca_file=None)


def pilot_args_for(ca_file: Path | None) -> tuple[str, ...]:
    stage = Stage(root=Path("/s"), files={}, manifest_sha256="f" * 64, public_key_b64="KEY")
    request = StoredRequest("fe1", "main", "https://pool:1", {"e": {"idle": 1}}, None, 0.0, {})
    entry = EntryConfig(name="e", site="S")
    return pilot_arguments(entry, request, "g-1", "https://factory:1", stage, ca_file=ca_file)


def test_a_factory_behind_a_name_tells_pilots_that_name(tmp_path: Path) -> None:
    """Across hosts the certificate names the host (or a proxy), not the
    address the factory listens on: `public_url` is what pilots call."""
    _, public = generate_keypair(tmp_path / "keys")
    config = FactoryConfig(
        state_dir=tmp_path / "factory",
        issuer_public_key=public,
        public_url="https://factory.example.org:9620",
    )
    app = factory_app(config, "https://10.0.0.5:9620")
    assert app.state.factory.public_url == "https://factory.example.org:9620"
    plain = FactoryConfig(state_dir=tmp_path / "factory", issuer_public_key=public)
    assert factory_app(plain, "https://10.0.0.5:9620").state.factory.public_url.endswith(".5:9620")
