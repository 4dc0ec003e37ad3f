"""The PBS and LSF backends against STAND-IN batch commands.

No PBS server or LSF cluster can run here: qsub/qstat/qdel and
bsub/bjobs/bkill are the stand-in of tests/components/pbs_lsf_standin.py,
which prints what OpenPBS and LSF print and really runs the job scripts the
backends render (task index from PBS_ARRAY_INDEX / LSB_JOBINDEX, output
files where the directives say), two at a time. Every wait polls with a
deadline.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path

import pytest

from glidewms.config.factory import EntryConfig
from glidewms.factory.backends import BackendContext, PilotState, PilotSubmission
from glidewms.factory.backends.batch import BatchBackend
from glidewms.factory.backends.lsf import LsfBackend
from glidewms.factory.backends.pbs import PbsBackend
from tests.components.pbs_lsf_standin import install
from tests.integration import factory_harness
from tests.integration.factory_harness import submissions, token_file

BOOT = """#!/bin/bash
case "$4" in *-2) sleep 600 ;; esac
while [ ! -e @GO@ ]; do sleep 0.05; done
case "$4" in *-1) exit 3 ;; esac
echo "ok $4"
"""
HOLD = {"pbs": "-h", "lsf": "-H"}


@pytest.mark.parametrize("kind", ["pbs", "lsf"])
def test_backend_against_standin(kind: str, tmp_path: Path) -> None:
    backend_cls: type[BatchBackend] = {"pbs": PbsBackend, "lsf": LsfBackend}[kind]
    env = install(tmp_path / "bin", tmp_path / "standin", slots=2)
    bootstrap = tmp_path / "boot.sh"
    bootstrap.write_text(BOOT.replace("@GO@", str(tmp_path / "go")))
    token = token_file(tmp_path / "token")
    entry = EntryConfig(
        name="e1",
        site="S",
        backend=kind,
        cpus=1,
        memory=100,  # type: ignore[arg-type]
        batch={"env": env, "queue": "workq"},
    )
    context = BackendContext(
        state_dir=tmp_path / "state", bootstrap=bootstrap, entries={"e1": entry}
    )
    pilots = submissions(token)
    until = partial(factory_harness.until, deadline=time.monotonic() + 60, interval=0.1)

    async def scenario() -> None:
        backend = backend_cls(context)
        ids = await backend.submit(entry, pilots)
        assert len({i.split("[")[0] for i in ids}) == 1, "one array for three pilots"
        first = await backend.status(ids)
        assert [first[i] for i in ids] == [
            PilotState.running,
            PilotState.running,
            PilotState.queued,
        ], "two slots: the third waits"
        (tmp_path / "go").touch()
        await until(
            backend,
            ids,
            lambda s: s[ids[0]] is PilotState.finished and s[ids[1]] is PilotState.failed,
        )
        await until(backend, ids[2:], lambda s: s[ids[2]] is PilotState.running)
        logs = await backend.logs(ids[0])
        assert "ok g-0" in logs.stdout and "glidein g-0" in logs.stdout
        assert ids[0].split("/")[1] in logs.stdout, "the job ref the pilot logs is ours"
        await backend.remove([ids[2]])
        await until(
            backend, ids[2:], lambda s: s[ids[2]] in (PilotState.removed, PilotState.failed)
        )

        held_entry = entry.model_copy(
            update={"batch": entry.batch.model_copy(update={"options": [HOLD[kind]]})}
        )
        held = await backend.submit(held_entry, pilots[:1])
        assert (await backend.status(held))[held[0]] is PilotState.held
        await backend.remove(held)
        assert (await backend.status(held))[held[0]] is not PilotState.held

        unknown = await backend.status(["e1/99999[1]", "nowhere/1[1]"])
        assert unknown == {"e1/99999[1]": PilotState.finished, "nowhere/1[1]": PilotState.unknown}
        await backend.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["pbs", "lsf"])
def test_standin_adopts_marked_arrays_and_releases_held_pilots(kind: str, tmp_path: Path) -> None:
    """A factory that lost the ids of a submission finds its arrays by their mark (PBS
    `-v GLIDEWMS_MARK=`, LSF `-Jd`) among all jobs; a held pilot is released (qrls,
    bresume) and runs."""
    backend_cls: type[BatchBackend] = {"pbs": PbsBackend, "lsf": LsfBackend}[kind]
    env = install(tmp_path / "bin", tmp_path / "standin", slots=4)
    bootstrap = tmp_path / "boot.sh"
    bootstrap.write_text('#!/bin/bash\necho "ok $4"\n')
    token = token_file(tmp_path / "token")
    entry = EntryConfig(
        name="e1",
        site="S",
        backend=kind,
        cpus=1,
        memory=100,  # type: ignore[arg-type]
        batch={"env": env, "options": [HOLD[kind]]},
    )
    other = entry.model_copy(update={"name": "e2"})
    context = BackendContext(
        state_dir=tmp_path / "state", bootstrap=bootstrap, entries={"e1": entry, "e2": other}
    )
    pilots = [
        PilotSubmission(f"e1-t-{i}", ("--x", "y", "--glidein-id", f"e1-t-{i}"), token)
        for i in range(6)
    ]
    until = partial(factory_harness.until, deadline=time.monotonic() + 60, interval=0.1)

    async def scenario() -> None:
        backend = backend_cls(context)
        first = await backend.submit(entry, pilots[:3])
        single = await backend.submit(entry, pilots[3:4])  # PBS: a plain job, no array
        await backend.submit(other, [PilotSubmission("e2-t-0", ("--glidein-id", "e2-t-0"), token)])
        ids = [p.glidein_id for p in pilots]
        found = await backend.adopt(entry, ids)
        assert found == dict(zip(ids[:4], first + single, strict=True))
        assert set((await backend.adopt(other, ["e2-t-0"])).values()) != set(found.values())

        assert set((await backend.status(first)).values()) == {PilotState.held}
        await backend.release(first[:1])
        seen = await until(backend, first, lambda s: s[first[0]] is PilotState.finished)
        assert seen[first[1]] is PilotState.held, "only the released one ran"
        await backend.remove([*first[1:], *single])
        await backend.close()

    asyncio.run(scenario())
