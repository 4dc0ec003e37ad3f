"""The SSH backend against a real sshd on loopback driving the real Slurm (BOSCO style).

sshd comes from tests/components/sshd_server.py and Slurm from
tests/components/slurm_cluster.py (both session fixtures). The factory logs
in as the test user `wmsuser` with the entry's own key, checks the server's
host key, stages the pilot token over SFTP and runs sbatch/squeue/scancel
over the connection, as it would on a remote cluster's login node. The pilot
is a stand-in bootstrap (records its argv, checks its token file, waits for
a release file). Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from glidewms.config.factory import EntryConfig
from glidewms.factory.backends import BackendContext, BackendError, PilotState, PilotSubmission
from glidewms.factory.backends.ssh import SshBackend
from tests.components.slurm_cluster import SlurmCluster
from tests.components.slurm_cluster import slurm as slurm  # the session fixture
from tests.components.sshd_server import USER, Sshd
from tests.components.sshd_server import sshd as sshd  # the session fixture
from tests.integration.factory_harness import FactoryFiles, Frontend, stand_in, wait_for

STAND_IN = stand_in(
    ', run by Slurm on the "remote" cluster.',
    'echo "pilot $gid started as $(id -un)"',
    check_leaks=False,
)


@pytest.fixture
def remote(sshd: Sshd, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """This test's remote directory (relative to wmsuser's home) and a user-owned out dir."""
    name = f".glidewms-test-{os.getpid()}-{request.node.name}"
    home = Path(pwd.getpwnam(USER).pw_dir)
    out = sshd.user_dir(request.node.name)
    yield {"remote_dir": name, "path": home / name, "out": out}
    (out / "release").touch()
    shutil.rmtree(home / name, ignore_errors=True)


def ssh_entry(sshd: Sshd, remote: dict[str, Any], **values: Any) -> dict[str, Any]:
    return {
        "name": "ssh1",
        "site": "REMOTE_SLURM",
        "backend": "ssh",
        "cpus": 30,
        "memory": 100,
        "walltime": 600,
        "max_pilots": 10,
        "max_idle": 10,
        "max_per_cycle": 10,
        "ssh": {
            "host": "127.0.0.1",
            "port": sshd.port,
            "user": USER,
            "key_file": str(sshd.client_key),
            "known_hosts": str(sshd.known_hosts),
            "batch_system": "slurm",
            "remote_dir": remote["remote_dir"],
            "max_connections": 1,
        },
        **values,
    }


def test_factory_over_ssh_to_slurm(
    slurm: SlurmCluster,
    sshd: Sshd,
    remote: dict[str, Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """4 pilots as one array through one reused SSH connection; IDLE removes the two that
    wait; the others end and their logs come back over SFTP."""
    caplog.set_level(logging.DEBUG)
    files = FactoryFiles.create(tmp_path, STAND_IN, remote["out"])
    entry = EntryConfig(
        **ssh_entry(sshd, remote, batch={"queue": "debug", "env": {"SLURM_CONF": str(slurm.conf)}})
    )
    app = files.app(files.config(entry, cycle_seconds=0.3))
    factory = app.state.factory
    pilot_token = files.pilot_token()
    logins_before = sshd.logins()

    try:
        with TestClient(app) as client:
            fe1 = Frontend(client, "ssh1", files.headers("fe1", ["frontend"]), pilot_token)
            put, states = fe1.put, fe1.states
            put(4, 4, "NO")
            wait_for(
                lambda: states() == ["queued", "queued", "running", "running"],
                "two running and two queued pilots",
            )
            rows = factory.store.glideins()
            assert len({r.backend_id.split("/")[1].split("_")[0] for r in rows}) == 1
            running = factory.store.glideins(state="running")
            for r in running:
                args_file = remote["out"] / f"{r.glidein_id}.args"
                wait_for(args_file.exists, "pilot argv")
                args = args_file.read_text().splitlines()
                assert args[args.index("--glidein-id") + 1] == r.glidein_id
                assert not any(pilot_token in a for a in args)

            # The token was staged over SFTP: a 0600 file of the remote account.
            staged = remote["path"] / "ssh1" / "tokens" / "fe1.main.token"
            assert stat.S_IMODE(staged.stat().st_mode) == 0o600
            assert staged.stat().st_uid == pwd.getpwnam(USER).pw_uid
            assert staged.read_text() == pilot_token + "\n" or staged.read_text() == pilot_token

            settled = factory.cycles
            wait_for(lambda: factory.cycles >= settled + 4, "four more cycles")
            assert len(factory.store.glideins()) == 4

            put(0, 4, "IDLE")
            wait_for(
                lambda: states() == ["removed", "removed", "running", "running"],
                "the queued pilots removed",
            )
            (remote["out"] / "release").touch()
            wait_for(
                lambda: states() == ["finished", "finished", "removed", "removed"],
                "the running pilots finished",
            )
            first = running[0]
            wait_for(
                lambda: factory.archive.read("ssh1", "fe1", first.glidein_id)["archived"],
                "logs archived",
            )
            archived = factory.archive.read("ssh1", "fe1", first.glidein_id)
            assert f"pilot {first.glidein_id} started as {USER}" in archived["stdout"]

            # Dozens of commands and SFTP transfers, one connection (max_connections 1).
            assert factory.backends["ssh"].pool(entry).opened == 1
            assert sshd.logins() - logins_before == 1
    finally:
        slurm.run("scancel", f"--user={USER}")
    assert str(sshd.client_key) not in caplog.text
    assert pilot_token not in caplog.text


def test_ssh_refuses_unknown_host_keys_and_wrong_keys(
    sshd: Sshd, remote: dict[str, Any], tmp_path: Path
) -> None:
    """A host key not in known_hosts, a missing known_hosts and a key the server does not
    accept all fail the submission with a reason that never shows the key's path."""
    token = tmp_path / "credentials" / "fe1" / "main.token"
    token.parent.mkdir(parents=True)
    token.write_text("secret\n")
    other = tmp_path / "other_host_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(other)],
        check=True,
        timeout=30,
    )
    wrong_known = tmp_path / "known_hosts"
    wrong_known.write_text(
        f"[127.0.0.1]:{sshd.port} "
        + " ".join((tmp_path / "other_host_key.pub").read_text().split()[:2])
        + "\n"
    )
    base = ssh_entry(sshd, remote)
    cases = {
        "host key": (dict(base["ssh"], known_hosts=str(wrong_known)), r"[Hh]ost key"),
        "no known_hosts": (
            dict(base["ssh"], known_hosts=str(tmp_path / "nope")),
            r"known_hosts file .* does not exist",
        ),
        "wrong key": (dict(base["ssh"], key_file=str(other)), r"[Pp]ermission denied"),
    }
    pilots = [PilotSubmission("g-1", ("--glidein-id", "g-1"), token)]

    async def scenario() -> None:
        for what, (contact, pattern) in cases.items():
            entry = EntryConfig(**dict(base, ssh=contact))
            backend = SshBackend(
                BackendContext(
                    state_dir=tmp_path / "state",
                    bootstrap=tmp_path / "boot.sh",
                    entries={"ssh1": entry},
                )
            )
            with pytest.raises(BackendError, match=pattern) as caught:
                await backend.submit(entry, pilots)
            assert str(contact["key_file"]) not in str(caught.value), what
            await backend.close()

    (tmp_path / "boot.sh").write_text("#!/bin/bash\n")
    asyncio.run(scenario())
    assert not remote["path"].exists(), "nothing was written on a refused connection"


def test_a_renewed_entry_token_reaches_running_pilots_over_sftp(
    slurm: SlurmCluster,
    sshd: Sshd,
    remote: dict[str, Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The request's entry token is staged beside the pilots as a 0600 file of the remote
    account; a renewed one (a new PUT) is pushed over SFTP to the file a running pilot
    reads, and the pilot reads the new token when it ends."""
    caplog.set_level(logging.DEBUG)
    reads_token = STAND_IN.replace(
        "\nexit 0\n", '\ncat "$GLIDEIN_TOKEN_FILE" > "$out/$gid.token"\nexit 0\n'
    )
    assert reads_token != STAND_IN
    files = FactoryFiles.create(tmp_path, reads_token, remote["out"])
    entry = EntryConfig(
        **ssh_entry(sshd, remote, batch={"queue": "debug", "env": {"SLURM_CONF": str(slurm.conf)}})
    )
    app = files.app(files.config(entry, cycle_seconds=0.3))
    factory = app.state.factory
    group_token = files.pilot_token()

    def entry_token() -> str:
        return files.issuer.issue("pilot", ["pilot"], 600, fe="fe1", group="main", entry="ssh1")

    first, renewed = entry_token(), entry_token()
    assert first != renewed
    staged = remote["path"] / "ssh1" / "tokens" / "fe1.main+ssh1.token"
    try:
        with TestClient(app) as client:
            headers = files.headers("fe1", ["frontend"])

            def put(n: int, token: str) -> None:
                response = client.put(
                    "/api/v1/requests/main",
                    headers=headers,
                    json={
                        "pool_url": "http://127.0.0.1:9998",
                        "pilot_token": group_token,
                        "entries": {"ssh1": {"idle": n, "max_running": n, "pilot_token": token}},
                    },
                )
                assert response.status_code == 200, response.text

            put(1, first)
            [pilot] = wait_for(lambda: factory.store.glideins(state="running"), "a running pilot")
            assert staged.read_text().strip() == first
            assert stat.S_IMODE(staged.stat().st_mode) == 0o600
            assert staged.stat().st_uid == pwd.getpwnam(USER).pw_uid

            put(1, renewed)
            wait_for(lambda: staged.read_text().strip() == renewed, "the renewed token pushed")
            (remote["out"] / "release").touch()
            read = remote["out"] / f"{pilot.glidein_id}.token"
            wait_for(read.exists, "the pilot to read its token as it ends")
            assert read.read_text().strip() == renewed
            put(0, renewed)
    finally:
        slurm.run("scancel", f"--user={USER}")
    for token in (group_token, first, renewed):
        assert token not in caplog.text


def test_ssh_adopts_marked_arrays_and_releases_held_pilots(
    slurm: SlurmCluster, sshd: Sshd, remote: dict[str, Any], tmp_path: Path
) -> None:
    """Over SSH, the remote Slurm's marks find the pilots of a submission whose job id
    was lost (squeue -n over the connection), and `scontrol release` frees a held one."""
    token = tmp_path / "credentials" / "fe1" / "main.token"
    token.parent.mkdir(parents=True)
    token.write_text("secret\n")
    token.chmod(0o600)
    (tmp_path / "boot.sh").write_text('#!/bin/bash\necho "ok $4"\n')
    entry = EntryConfig(
        **ssh_entry(
            sshd,
            remote,
            cpus=1,
            batch={"queue": "debug", "env": {"SLURM_CONF": str(slurm.conf)}, "options": ["--hold"]},
        )
    )
    pilots = [
        PilotSubmission(f"ssh1-t-{i}", ("--x", "y", "--glidein-id", f"ssh1-t-{i}"), token)
        for i in range(4)
    ]
    ids = [p.glidein_id for p in pilots]

    async def scenario() -> None:
        backend = SshBackend(
            BackendContext(
                state_dir=tmp_path / "state",
                bootstrap=tmp_path / "boot.sh",
                entries={"ssh1": entry},
            )
        )
        try:
            submitted = await backend.submit(entry, pilots[:3])
            assert await backend.adopt(entry, ids) == dict(zip(ids[:3], submitted, strict=True))
            seen = await backend.status(submitted)
            assert set(seen.values()) == {PilotState.held}
            await backend.release(submitted[:1])
            deadline = asyncio.get_running_loop().time() + 60
            while (await backend.status(submitted[:1]))[submitted[0]] is not PilotState.finished:
                assert asyncio.get_running_loop().time() < deadline, "released pilot never ran"
                await asyncio.sleep(0.2)
            assert (await backend.status(submitted[1:2]))[submitted[1]] is PilotState.held
            await backend.remove(submitted[1:])
        finally:
            await backend.close()

    try:
        asyncio.run(scenario())
    finally:
        slurm.run("scancel", f"--user={USER}")
