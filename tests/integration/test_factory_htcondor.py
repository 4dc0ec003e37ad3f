"""The HTCondor-G / HTCondor-CE backend against a STAND-IN schedd.

No schedd can run here (the htcondor wheel has the bindings, no daemons):
`tests/components/condor_schedd_standin.py` is an object that honours the
three `htcondor2.Schedd` calls the backend makes (submit with the real
`htcondor2.Submit`, query with a constraint evaluated by the real ClassAd
library, act with the real `htcondor2.JobAction`), keeps a job table and
lets the test move jobs through states as the gridmanager would, or run one
as a worker node would. Every test here says `standin` in its name.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from glidewms.config.factory import EntryConfig
from glidewms.db import make_engine
from glidewms.factory.api import create_app
from glidewms.factory.backends import BackendContext, BackendError, PilotState, PilotSubmission
from glidewms.factory.backends import htcondor as htcondor_module
from glidewms.factory.backends.htcondor import HtcondorBackend
from glidewms.factory.store import FactoryStore, Glidein
from tests.components.condor_schedd_standin import StandinSchedd
from tests.integration.factory_harness import (
    FACTORY_URL,
    FactoryFiles,
    Frontend,
    stand_in,
    submissions,
    token_file,
    wait_for,
)

Q, R, H, F, X, D = (
    PilotState.queued,
    PilotState.running,
    PilotState.held,
    PilotState.finished,
    PilotState.failed,
    PilotState.removed,
)


def condor_entry(name: str = "ce1", **fields: Any) -> EntryConfig:
    return EntryConfig.model_validate(
        {
            "name": name,
            "site": "S",
            "backend": "htcondor",
            "cpus": 1,
            "memory": 100,
            "batch": {"array_size": 2},
            "condor": {"ce_host": "ce.example.org"},
            **fields,
        }
    )


def test_standin_schedd_submit_status_release_remove_logs(tmp_path: Path) -> None:
    schedd = StandinSchedd()
    out = tmp_path / "out"
    out.mkdir()
    bootstrap = tmp_path / "glidein_startup.sh"
    bootstrap.write_text(
        stand_in(" (HTCondor stand-in test)", 'echo "pilot $gid up"').replace("@OUT@", str(out))
    )
    bootstrap.chmod(0o755)
    (out / "release").touch()  # the stand-in bootstrap exits at once
    token = token_file(tmp_path / "credentials" / "fe1" / "main.token")
    e1, e2 = condor_entry("ce1"), condor_entry("ce2")
    context = BackendContext(
        state_dir=tmp_path / "state", bootstrap=bootstrap, entries={"ce1": e1, "ce2": e2}
    )
    tricky = ("--attr", "A=it's a $test")
    pilots = [
        PilotSubmission(p.glidein_id, (*p.arguments, *tricky), p.token_file)
        for p in submissions(token)
    ]

    async def scenario() -> None:
        backend = HtcondorBackend(context, schedd_factory=lambda condor: schedd)
        ids = await backend.submit(e1, pilots)
        other = await backend.submit(e2, submissions(token, 1))
        assert [i.split("/")[1].split(".")[0] for i in ids] == ["42", "42", "43"], (
            "array_size 2: two clusters, procs in order"
        )
        assert schedd.refs(GlideWMS_GlideinId="g-2") == ["43.0"]
        assert schedd.jobs["42.1"]["GlideWMS_GlideinId"] == "g-1"
        assert "secret" not in str(schedd.jobs["42.0"]), "the token is a file, never in the ad"

        schedd.calls.clear()
        seen = await backend.status([*ids, *other])
        assert schedd.calls == ["query"], "one query for every pilot at one schedd"
        assert set(seen.values()) == {Q}

        schedd.set_status("42.0", 2, GridJobStatus="RUNNING")
        schedd.set_status("42.1", 1, GridJobStatus="RUNNING")
        schedd.set_status("43.0", 5, HoldReason="Error from CE: proxy expired")
        seen = await backend.status(ids)
        assert [seen[i] for i in ids] == [R, R, H]
        assert "proxy expired" in (await backend.logs(ids[2])).stderr

        await backend.release([ids[2]])
        assert (await backend.status([ids[2]]))[ids[2]] is Q
        assert schedd.calls[-2] == "act Release"

        assert schedd.run("42.0", tmp_path / "sandbox0") == 0
        args = (out / "g-0.args").read_text().splitlines()
        assert args == ["--x", "y", "--attr", "A=it's a $test", "--glidein-id", "g-0"], (
            "the pilot got exactly its arguments"
        )
        logs = await backend.logs(ids[0])
        assert "pilot g-0 up" in logs.stdout
        schedd.set_status("42.1", 4, ExitCode=2)
        seen = await backend.status(ids)
        assert [seen[i] for i in ids] == [F, X, Q]

        await backend.remove([ids[2], *other])
        seen = await backend.status([ids[2], *other])
        assert seen == {ids[2]: D, other[0]: D}
        schedd.forget("42.0")
        assert (await backend.status(ids[:1]))[ids[0]] is F, "left the queue: ended"

        schedd.down = True
        assert set((await backend.status(ids)).values()) == {PilotState.unknown}, (
            "a schedd that does not answer never looks like ended pilots"
        )
        with pytest.raises(BackendError, match="stand-in is down"):
            await backend.submit(e1, pilots[:1])
        schedd.down = False
        schedd.fail_submit = "Failed to submit: no such route"
        with pytest.raises(BackendError, match="no such route") as info:
            await backend.submit(e1, pilots)
        assert info.value.submitted == []

    asyncio.run(scenario())


def test_standin_schedd_credentials_are_checked_and_never_shown(tmp_path: Path) -> None:
    schedd = StandinSchedd()
    proxy = tmp_path / "x509up"
    e1 = condor_entry(
        "ce1",
        condor={
            "ce_host": "ce.example.org",
            "x509": str(proxy),
            "scitoken": str(tmp_path / "scitoken"),
        },
    )
    token = token_file(tmp_path / "credentials" / "fe1" / "main.token")
    context = BackendContext(
        state_dir=tmp_path / "state", bootstrap=tmp_path / "boot", entries={"ce1": e1}
    )

    async def scenario() -> None:
        backend = HtcondorBackend(context, schedd_factory=lambda condor: schedd)
        with pytest.raises(BackendError, match=r"condor\.x509 is not a readable file"):
            await backend.submit(e1, submissions(token, 1))
        assert schedd.calls == [], "nothing reaches the schedd without its credential"
        proxy.write_text("PROXY CONTENT")
        (tmp_path / "scitoken").write_text("SCITOKEN CONTENT")
        [ref] = await backend.submit(e1, submissions(token, 1))
        ad = str(schedd.jobs[ref.split("/")[1]])
        assert str(proxy) in ad and "CONTENT" not in ad

    asyncio.run(scenario())


def test_standin_schedd_factory_adopts_pilots_of_an_interrupted_submission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A factory stopped after `Schedd.submit` and before storing the cluster id: on
    restart it finds the procs by their GlideWMS_GlideinId and submits none twice."""
    schedd = StandinSchedd()
    monkeypatch.setattr(htcondor_module, "default_schedd", lambda condor: schedd)
    out = tmp_path / "out"
    out.mkdir()
    files = FactoryFiles.create(tmp_path, stand_in(" (HTCondor)", "true"), out)
    e1 = condor_entry("ce1", max_idle=10, max_per_cycle=10)
    config = files.config(e1, cycle_seconds=0.1)
    token = token_file(config.state_dir / "credentials" / "fe1" / "main.token")

    # What the killed factory left: three glideins recorded, a cluster of two at the
    # schedd (the third never got there), no cluster id stored.
    store = FactoryStore(make_engine(config.resolved_database_url()))
    now = time.time()
    ids = ["ce1-dead-1", "ce1-dead-2", "ce1-dead-3"]
    store.add_glideins([Glidein.submitted(i, "ce1", "htcondor", "fe1", "main", now) for i in ids])
    backend = HtcondorBackend(
        BackendContext(config.state_dir, files.bootstrap, entries={"ce1": e1})
    )
    asyncio.run(
        backend.submit(e1, [PilotSubmission(i, ("--glidein-id", i), token) for i in ids[:2]])
    )
    assert len(schedd.jobs) == 2

    app = files.app(config)
    with TestClient(app) as client:
        fe = Frontend(client, "ce1", files.headers("fe1", ["frontend"]), files.pilot_token())
        wait_for(
            lambda: store.get(ids[2]).state.value == "failed",  # type: ignore[union-attr]
            "recovery to finish",
        )
        adopted = {i: store.get(i) for i in ids[:2]}
        assert {i: g.backend_id for i, g in adopted.items() if g} == {
            "ce1-dead-1": "ce1/42.0",
            "ce1-dead-2": "ce1/42.1",
        }
        assert store.get(ids[2]).exit_reason == "submit_failed"  # type: ignore[union-attr]
        fe.put(idle=3, max_running=3, remove="NO")
        wait_for(lambda: len(schedd.jobs) == 3, "one new pilot")
        done = app.state.factory.cycles
        wait_for(lambda: app.state.factory.cycles >= done + 3, "three more cycles")
        assert len(schedd.jobs) == 3
        assert fe.states() == ["failed", "queued", "queued", "queued"], (
            "two adopted + one new: the request of 3 is met, none submitted twice"
        )


def test_standin_schedd_retired_entry_survives_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry removed by a reload while its pilots remain is stored: a factory restarted
    without it keeps watching those pilots, adopts its interrupted submissions (not
    `submit_failed`), marks those of an entry it never knew `lost`, and forgets the
    entry once its last pilot ended."""
    schedd = StandinSchedd()
    monkeypatch.setattr(htcondor_module, "default_schedd", lambda condor: schedd)
    out = tmp_path / "out"
    out.mkdir()
    files = FactoryFiles.create(tmp_path, stand_in(" (HTCondor)", "true"), out)
    a, b = condor_entry("ceA"), condor_entry("ceB")
    both = files.config(a, cycle_seconds=0.1).model_copy(update={"entries": [a, b]})
    only_a = both.model_copy(update={"entries": [a]})
    admin = files.headers("admin", ["admin"])
    first = create_app_with(files, both, only_a)  # makes the state directory
    store = FactoryStore(make_engine(both.resolved_database_url()))
    with TestClient(first) as client:
        fe = Frontend(client, "ceB", files.headers("fe1", ["frontend"]), files.pilot_token())
        fe.put(idle=2, max_running=2, remove="NO")
        wait_for(lambda: len(schedd.refs(GlideWMS_Entry="ceB")) == 2, "ceB's pilots")
        reloaded = client.post("/api/v1/reload", headers=admin)
        assert reloaded.status_code == 200 and reloaded.json()["removed"] == ["ceB"]
        assert set(store.retired_entries()) == {"ceB"}
    # What a kill during a submission at ceB would leave, and a glidein of an entry this
    # factory no longer knows anything about.
    now = time.time()
    store.add_glideins(
        [
            Glidein.submitted(i, e, "htcondor", "fe1", "main", now)
            for i, e in (("ceB-dead-1", "ceB"), ("gone-dead-1", "gone"))
        ]
    )
    token = token_file(both.state_dir / "credentials" / "fe1" / "main.token")
    asyncio.run(
        HtcondorBackend(BackendContext(both.state_dir, files.bootstrap, entries={"ceB": b})).submit(
            b, [PilotSubmission("ceB-dead-1", ("--glidein-id", "ceB-dead-1"), token)]
        )
    )

    restarted = files.app(only_a)
    factory = restarted.state.factory
    with TestClient(restarted):
        wait_for(
            lambda: (
                store.get("ceB-dead-1").backend_id  # type: ignore[union-attr]
                is not None
            ),
            "the interrupted ceB submission adopted",
        )
        lost = store.get("gone-dead-1")
        assert lost is not None and (lost.state.value, lost.exit_reason) == ("failed", "lost")
        assert "ceB" in factory.retired
        for ref in schedd.refs(GlideWMS_Entry="ceB"):
            schedd.set_status(ref, 2, GridJobStatus="RUNNING")
        wait_for(
            lambda: [g.state.value for g in store.glideins(entry="ceB")] == ["running"] * 3,
            "ceB's pilots watched after the restart",
        )
        for ref in schedd.refs(GlideWMS_Entry="ceB"):
            schedd.set_status(ref, 4, ExitCode=0)
        wait_for(
            lambda: store.retired_entries() == {} and "ceB" not in factory.retired,
            "ceB forgotten once its pilots ended",
        )
        assert {g.state.value for g in store.glideins(entry="ceB")} == {"finished"}


def create_app_with(files: FactoryFiles, config: Any, next_config: Any) -> Any:
    """A factory app whose reload loads `next_config`."""
    return create_app(
        config,
        FACTORY_URL,
        bootstrap=files.bootstrap,
        agent_dir=files.agent,
        reloader=lambda: next_config,
    )
