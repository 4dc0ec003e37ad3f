"""The factory against a real Grid Engine (sge_qmaster + sge_execd on localhost, started here).

The cell comes from tests/components/sge_cluster.py (a session fixture, shut
down with qconf -ke/-km). Root may not submit to Grid Engine, so the entry
runs its batch commands as the test user through `batch.command_prefix`
(`runuser -u wmsuser --`), and the pilot token is staged as a 0600 file of
that user. The pilot is a stand-in bootstrap that records its argv and
checks its token file, then waits for a release file. Every wait polls with
a deadline.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from glidewms.config.factory import EntryConfig
from glidewms.factory.backends import BackendContext, PilotState, PilotSubmission
from glidewms.factory.backends.sge import SgeBackend
from tests.components.sge_cluster import USER, SgeCluster
from tests.components.sge_cluster import sge as sge  # the session fixture
from tests.integration import factory_harness
from tests.integration.factory_harness import (
    FactoryFiles,
    Frontend,
    stand_in,
    submissions,
    token_file,
    wait_for,
)

STAND_IN = stand_in(
    ", run by Grid Engine from the factory's job script.",
    'echo "site said ${SITE_SAYS:-nothing} to $(id -un)"\necho "pilot $gid started"',
)


def user_owned(path: Path) -> Path:
    path.mkdir(mode=0o755)
    shutil.chown(path, USER, USER)
    return path


@pytest.fixture
def place(sge: SgeCluster, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A directory of the test user for this test's logs and release file."""
    path = user_owned(sge.user_dir / request.node.name)
    yield path
    (path / "release").touch()


def sge_entry(cluster: SgeCluster, place: Path, **values: Any) -> EntryConfig:
    base: dict[str, Any] = {
        "name": "sge1",
        "site": "LOCAL_SGE",
        "backend": "sge",
        "cpus": 1,
        "walltime": 600,
        "max_pilots": 10,
        "max_idle": 10,
        "max_per_cycle": 10,
        "batch": {
            "queue": "all.q",
            "env": cluster.env,
            "command_prefix": cluster.prefix,
            "log_dir": str(place / "logs"),
        },
        "environment": {"SITE_SAYS": "hello"},
    }
    base.update(values)
    return EntryConfig(**base)


def test_factory_submits_an_array_tracks_and_removes(
    sge: SgeCluster, place: Path, tmp_path: Path
) -> None:
    """3 pilots in one qsub, run as the test user; ALL with max_running 1 removes two."""
    files = FactoryFiles.create(tmp_path, STAND_IN, place)
    app = files.app(files.config(sge_entry(sge, place), cycle_seconds=0.3))
    factory = app.state.factory
    pilot_token = files.pilot_token()

    with TestClient(app) as client:
        fe1 = Frontend(client, "sge1", files.headers("fe1", ["frontend"]), pilot_token)
        put, states = fe1.put, fe1.states
        put(3, 3, "NO")
        wait_for(lambda: states() == ["running"] * 3, "three running pilots")
        rows = factory.store.glideins()
        jobs = {r.backend_id.split("/")[1].split(".")[0] for r in rows}
        assert len(jobs) == 1, "one array job for the whole submission"
        [job] = jobs
        assert sorted(r.backend_id for r in rows) == [f"sge1/{job}.{i}" for i in (1, 2, 3)]
        for r in rows:
            args_file = place / f"{r.glidein_id}.args"
            wait_for(args_file.exists, "pilot argv")
            args = args_file.read_text().splitlines()
            assert args[args.index("--glidein-id") + 1] == r.glidein_id
            assert args[args.index("--entry") + 1] == "sge1"
            assert not any(pilot_token in a for a in args)

        # The token went to a 0600 file of the batch user, never into the job script.
        staged = place / "logs" / "tokens" / "fe1.main.token"
        info = staged.stat()
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == pwd.getpwnam(USER).pw_uid
        assert staged.read_text().strip() == pilot_token
        script = sge.run("qstat", "-j", job, as_user=True).stdout
        assert "glidewms-sge1" in script and pilot_token not in script

        settled = factory.cycles
        wait_for(lambda: factory.cycles >= settled + 4, "four more cycles")
        assert len(factory.store.glideins()) == 3, "nothing more while the request is met"

        put(0, 1, "ALL")
        wait_for(lambda: states() == ["removed", "removed", "running"], "two running removed")
        [survivor] = factory.store.glideins(state="running")
        assert survivor.glidein_id == rows[-1].glidein_id, "the oldest running pilot stays"

        (place / "release").touch()
        wait_for(lambda: states() == ["finished", "removed", "removed"], "the last one ends")
        wait_for(
            lambda: factory.archive.read("sge1", "fe1", survivor.glidein_id)["archived"],
            "logs archived",
        )
        archived = factory.archive.read("sge1", "fe1", survivor.glidein_id)
        assert f"pilot {survivor.glidein_id} started" in archived["stdout"]
        assert f"site said hello to {USER}" in archived["stdout"]


def test_sge_backend_states_and_failures(sge: SgeCluster, place: Path, tmp_path: Path) -> None:
    """The backend alone: exit codes (from qacct) map to finished/failed, a held array
    to held, arrays larger than array_size are split, qsub errors name the cause."""
    bootstrap = tmp_path / "boot.sh"
    bootstrap.write_text(
        '#!/bin/bash\ncase "$4" in *-1) exit 3 ;; *-2) sleep 600 ;; esac\necho "ok $4"\n'
    )
    token = token_file(tmp_path / "credentials" / "fe1" / "main.token")
    entry = sge_entry(sge, place)
    entry = entry.model_copy(update={"batch": entry.batch.model_copy(update={"array_size": 2})})
    context = BackendContext(
        state_dir=tmp_path / "state", bootstrap=bootstrap, entries={"sge1": entry}
    )
    until = partial(factory_harness.until, deadline=time.monotonic() + 90, interval=0.2)

    async def scenario() -> None:
        backend = SgeBackend(context)
        pilots = submissions(token)
        ids = await backend.submit(entry, pilots)
        assert len({i.split(".")[0] for i in ids}) == 2, "array_size 2: two arrays for three"
        assert [i.rsplit(".", 1)[1] for i in ids] == ["1", "2", "1"]
        seen = await until(
            backend,
            ids,
            lambda s: s[ids[0]] is PilotState.finished and s[ids[1]] is PilotState.failed,
        )
        assert seen[ids[2]] in (PilotState.queued, PilotState.running)
        logs = await backend.logs(ids[0])
        assert "ok g-0" in logs.stdout and "glidein g-0" in logs.stdout

        await until(backend, ids[2:], lambda s: s[ids[2]] is PilotState.running)
        await backend.remove([ids[2]])
        await until(
            backend, ids[2:], lambda s: s[ids[2]] in (PilotState.removed, PilotState.failed)
        )

        held_entry = entry.model_copy(
            update={"batch": entry.batch.model_copy(update={"options": ["-h"]})}
        )
        held = await backend.submit(held_entry, pilots[:1])
        await until(backend, held, lambda s: s[held[0]] is PilotState.held)
        await backend.remove(held)
        await until(backend, held, lambda s: s[held[0]] is not PilotState.held)

        unknown = await backend.status(["sge1/999999.1", "nowhere/1.1", "garbage"])
        assert unknown == {
            "sge1/999999.1": PilotState.finished,
            "nowhere/1.1": PilotState.unknown,
            "garbage": PilotState.unknown,
        }
        bad = entry.model_copy(
            update={"batch": entry.batch.model_copy(update={"queue": "nosuchqueue"})}
        )
        with pytest.raises(Exception, match=r"qsub failed.*nosuchqueue"):
            await backend.submit(bad, pilots[:1])
        await backend.close()

    asyncio.run(scenario())
    assert os.stat(place / "logs").st_uid == pwd.getpwnam(USER).pw_uid


def test_sge_backend_adopts_marked_arrays_and_releases_held_pilots(
    sge: SgeCluster, place: Path, tmp_path: Path
) -> None:
    """A factory that lost the job id of a qsub finds the array by its name (the first
    glidein id) and each task's pilot; a held pilot is released (qrls) and runs."""
    bootstrap = tmp_path / "boot.sh"
    bootstrap.write_text('#!/bin/bash\necho "ok $4"\n')
    token = token_file(tmp_path / "credentials" / "fe1" / "main.token")
    entry = sge_entry(sge, place)
    held_entry = entry.model_copy(
        update={"batch": entry.batch.model_copy(update={"options": ["-h"]})}
    )
    context = BackendContext(
        state_dir=tmp_path / "state", bootstrap=bootstrap, entries={"sge1": entry}
    )
    until = partial(factory_harness.until, deadline=time.monotonic() + 90, interval=0.2)
    pilots = [
        PilotSubmission(f"sge1-t{n}-{i}", ("--x", "y", "--glidein-id", f"sge1-t{n}-{i}"), token)
        for n in (1, 2)
        for i in (1, 2, 3)
    ]

    async def scenario() -> None:
        backend = SgeBackend(context)
        first = await backend.submit(held_entry, pilots[:3])
        second = await backend.submit(held_entry, pilots[3:5])  # the 6th never submitted
        ids = [p.glidein_id for p in pilots]
        found = await backend.adopt(entry, ids)
        assert found == dict(zip(ids[:5], first + second, strict=True))
        assert await backend.adopt(entry.model_copy(update={"name": "sge"}), ids) == {}

        await until(backend, first, lambda s: s[first[0]] is PilotState.held)
        await backend.release(first[:1])
        await until(backend, first, lambda s: s[first[0]] is PilotState.finished)
        assert (await backend.status(first[1:2]))[first[1]] is PilotState.held
        await backend.remove([*first[1:], *second])
        await backend.close()

    asyncio.run(scenario())
