"""The compact form of a cluster (submit/compact.py, pool/materialize.py):
every job, sent as proto + delta and materialised by the pool, is the job
the plain path would have queued; and how many jobs a late cluster
materialises, as HTCondor counts them."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from glidewms import classads
from glidewms.pool.materialize import Proto, how_many, proc_job
from glidewms.pool.routes.jobs import ProcDelta
from glidewms.submit import JobDescription, parse_submit, stream_submit
from glidewms.submit.compact import Chunker, delta, limits_of, materialise, wire_job

FILES = {
    "process": """
        executable = run.sh
        arguments = in.$(Process) --seed $(Process)
        output = out.$(Cluster).$(Process)
        error = err.$(Process)
        queue 5
    """,
    "itemdata": """
        executable = run.sh
        arguments = $(name) $(n)
        request_memory = $(mem)
        queue name, n, mem from (
            alpha 1 100
            beta 2 200
            gamma 3 100
        )
    """,
    "queue from file": """
        executable = run.sh
        environment = "X=$(x) Y=fixed"
        queue x from rows.txt
    """,
    "per-job inputs": """
        executable = run.sh
        transfer_input_files = in.$(Process), common.dat
        queue 3
    """,
    "several queue statements": """
        executable = run.sh
        arguments = first
        queue 2
        arguments = second
        +Extra = "only here"
        queue 2
    """,
    "matching": """
        executable = run.sh
        arguments = $(f)
        queue f matching *.dat
    """,
    "late": """
        executable = run.sh
        arguments = $(Process)
        max_materialize = 2
        max_idle = 1
        queue 4
    """,
}


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "rows.txt").write_text("a\nb\nc\n")
    (tmp_path / "common.dat").write_text("c")
    (tmp_path / "other.dat").write_text("o")
    for p in range(5):
        (tmp_path / f"in.{p}").write_text(str(p))
    return tmp_path


def sandbox(job: JobDescription) -> list[dict[str, Any]]:
    """Stand-in for the client's upload: a name and a fake hash per file."""
    files = ([job.executable] if job.executable else []) + job.inputs
    return [
        {"name": p.name, "sha256": f"{hash(p.name) & 0xFFFF:064x}", "executable": False}
        for p in files
    ]


def plain_ad(job: JobDescription) -> dict[str, Any]:
    ad = classads.parse_ad(job.ad_text().replace("$(ClusterId)", "42"))
    return {k: str(ad.lookup(k)) for k in ad}


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_job_materialises_as_the_plain_path_queues_it(base: Path, name: str) -> None:
    jobs = parse_submit(textwrap.dedent(FILES[name]), "t.sub", base).jobs
    assert len(jobs) > 1
    proto = wire_job(jobs[0], sandbox(jobs[0]))
    pool_proto = Proto(proto["attrs"], proto["sandbox"], proto["args"], proto["env"])
    for job in jobs:
        wire = wire_job(job, sandbox(job))
        d = json.loads(json.dumps(delta(proto, wire)))  # as it travels
        assert materialise(proto, d) == wire
        stored = ProcDelta.model_validate(d).stored()  # as the pool keeps it
        made = proc_job(pool_proto, stored, job.proc_id)
        assert (made.args, made.env, made.sandbox) == (job.args, job.env, wire["sandbox"])
        assert plain_ad(job) == {
            k: str(v)
            for k, v in (
                (k, classads.parse_ad(made.ad_text.replace("$(ClusterId)", "42")).lookup(k))
                for k in classads.parse_ad(made.ad_text.replace("$(ClusterId)", "42"))
            )
        }


def test_jobs_that_differ_only_in_procid_have_empty_deltas(base: Path) -> None:
    jobs = parse_submit("executable = run.sh\nqueue 4\n", "t.sub", base).jobs
    proto = wire_job(jobs[0], [])
    assert [delta(proto, wire_job(j, [])) for j in jobs] == [{}] * 4


def test_a_proc_lacking_a_proto_attribute_says_so(base: Path) -> None:
    proto = {"attrs": {"A": "1", "B": "2"}, "sandbox": [], "args": [], "env": {}}
    job = {"attrs": {"A": "1"}, "sandbox": [], "args": [], "env": {}}
    assert delta(proto, job) == {"unset": ["B"]}
    assert materialise(proto, delta(proto, job)) == job


def test_the_limits_come_from_the_submit_file(base: Path) -> None:
    jobs = parse_submit(textwrap.dedent(FILES["late"]), "t.sub", base).jobs
    assert limits_of(jobs[0]) == (2, 1)
    only_idle = parse_submit("executable = run.sh\nmax_idle = 9\nqueue\n", "t.sub", base).jobs
    assert limits_of(only_idle[0]) == (None, 9)  # HTCondor: no max_materialize means no limit
    assert limits_of(parse_submit("executable = run.sh\nqueue\n", "t.sub", base).jobs[0]) == (
        None,
        None,
    )


def test_streamed_jobs_are_the_parsed_ones(base: Path) -> None:
    path = base / "t.sub"
    path.write_text(textwrap.dedent(FILES["itemdata"]))
    stream = stream_submit(path)
    assert [j.attrs for j in stream.jobs] == [
        j.attrs for j in parse_submit(path.read_text(), str(path), base, submit_file=str(path)).jobs
    ]


def test_chunks_are_bounded_in_procs_and_bytes_and_keep_proc_order() -> None:
    chunker = Chunker(max_bytes=100, max_procs=3)
    sent = []
    for p in range(10):
        sent += list(chunker.add({"args": [str(p) * (80 if p == 5 else 1)]}))
    sent += list(chunker.flush())
    assert [first for first, _ in sent] == [0, 3, 5, 6, 9]
    assert [len(c) for _, c in sent] == [3, 2, 1, 3, 1]
    assert all(len(c) <= 3 for _, c in sent)
    flat = [d["args"][0][0] for _, c in sent for d in c]
    assert flat == [str(p) for p in range(10)]


@pytest.mark.parametrize(
    ("left", "present", "not_running", "max_mat", "max_idle", "batch", "expected"),
    [
        (100, 0, 0, 10, None, 1000, 10),  # first batch: up to max_materialize
        (100, 10, 10, 10, None, 1000, 0),  # full
        (100, 7, 0, 10, None, 1000, 3),  # 3 left the queue
        (2, 0, 0, 10, None, 1000, 2),  # the last procs
        (100, 0, 0, None, 5, 1000, 5),  # max_idle alone: no materialize limit
        (100, 8, 3, None, 5, 1000, 2),  # 5 running: room for 2 more idle
        (100, 8, 5, None, 5, 1000, 0),  # idle + held reach max_idle
        (100, 8, 3, 9, 5, 1000, 1),  # both: the smaller room
        (10_000, 0, 0, None, None, 1000, 1000),  # a plain cluster: a batch at a time
        (100, 12, 0, 10, None, 1000, 0),  # over the limit (lowered): never negative
        (0, 0, 0, 10, 10, 1000, 0),  # nothing left
    ],
)
def test_how_many(left, present, not_running, max_mat, max_idle, batch, expected) -> None:
    assert how_many(left, present, not_running, max_mat, max_idle, batch) == expected
