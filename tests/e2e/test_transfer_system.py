"""File transfer as HTCondor does it, through the whole system (issue 12):
directory and URL inputs, the x509 proxy, outputs with subdirectories and
remaps landing at their submit-side paths with `glidewms fetch`, and the holds
for what could not be transferred. Pool, factory, frontend and real pilots
on loopback; URL inputs come from an HTTP server in this process.

Waits poll a condition with a deadline; no test asserts on timing.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import System, systems, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def system(tmp_path: Path) -> Iterator[Callable[..., System]]:
    with systems(tmp_path, claim_lease=30.0) as start:
        yield start


class _Remote(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/files/remote.txt":
            body = b"from the web\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def web() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Remote)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


JOB = """#!/bin/sh
set -e
cat indata/a.txt indata/sub/b.txt c.txt deeper/d.txt remote.txt > seen.txt
read line
echo "stdin=$line"
echo "proxy=$X509_USER_PROXY mode=$(stat -c %a "$X509_USER_PROXY") $(cat "$X509_USER_PROXY")"
mkdir -p results/deep
echo r1 > results/r1.txt
echo r2 > results/deep/r2.txt
echo renamed > rename_me.txt
echo extra > extra.txt
echo to-stderr >&2
"""


def fetch(s: System, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The user's `glidewms fetch`, as a command."""
    env = {
        **os.environ,
        "GLIDEWMS_POOL_URL": s.inst.services["pool"].url,
        "GLIDEWMS_TOKEN_FILE": str(s.inst.token_file("user")),
    }
    return subprocess.run(
        [sys.executable, "-m", "glidewms", "fetch", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def _submit_dir(tmp_path: Path) -> tuple[Path, Path]:
    """A submit directory with the job script and an initialdir `run` holding the inputs."""
    submit = tmp_path / "submit"
    run = submit / "run"
    (run / "indata" / "sub").mkdir(parents=True)
    (run / "indata" / "a.txt").write_text("a from dir\n")
    (run / "indata" / "sub" / "b.txt").write_text("b from subdir\n")
    (run / "contents" / "deeper").mkdir(parents=True)
    (run / "contents" / "c.txt").write_text("c from contents\n")
    (run / "contents" / "deeper" / "d.txt").write_text("d from contents/deeper\n")
    (run / "x509up_test").write_text("PROXY")
    (run / "in.txt").write_text("line from input\n")
    (submit / "job.sh").write_text(JOB)
    (submit / "job.sh").chmod(0o755)
    return submit, run


def test_inputs_outputs_and_holds_as_htcondor(
    system: Callable[..., System], tmp_path: Path, web: str
) -> None:
    submit, run = _submit_dir(tmp_path)
    s = system(max_pilots=1)
    [main] = s.submit(
        f"""
executable = job.sh
initialdir = run
transfer_input_files = indata, contents/, {web}/files/remote.txt
x509userproxy = x509up_test
input = in.txt
output = logs/job.out
error = logs/job.err
transfer_output_files = seen.txt, results, rename_me.txt
transfer_output_remaps = "rename_me.txt = renamed/final.txt"
request_memory = 32
queue
""",
        submit,
    )
    (submit / "none").mkdir()
    [nothing] = s.submit(
        """
executable = /bin/sh
transfer_executable = false
arguments = "-c 'echo only-streams; echo x > made.txt'"
initialdir = none
output = o.txt
error = e.txt
transfer_output_files = ""
request_memory = 32
queue
""",
        submit,
    )
    [missing] = s.submit(
        """
executable = /bin/sh
transfer_executable = false
arguments = "-c 'echo here > made.txt'"
transfer_output_files = made.txt, nothere.txt
request_memory = 32
queue
""",
        submit,
    )
    [bad_url] = s.submit(
        f"""
executable = /bin/true
transfer_executable = false
transfer_input_files = {web}/files/gone.txt
request_memory = 32
queue
""",
        submit,
    )
    keep = submit / "keep"
    (keep / "deep" / "dir").mkdir(parents=True)
    (keep / "deep" / "dir" / "in.txt").write_text("kept path\n")
    [preserved] = s.submit(
        """
executable = /bin/sh
transfer_executable = false
arguments = "-c 'mkdir -p out/sub; cat deep/dir/in.txt - > out/sub/o.txt'"
initialdir = keep
preserve_relative_paths = true
transfer_input_files = deep/dir/in.txt
input = deep/dir/in.txt
transfer_output_files = out/sub/o.txt
request_memory = 32
queue
""",
        submit,
    )
    ending = (main, nothing, missing, preserved)
    wait_for(
        lambda: (
            all(s.job(j)["state"] in ("completed", "held") for j in ending)
            and s.job(bad_url)["state"] == "held"
        ),
        "the five jobs to complete or be held",
        timeout=240,
    )

    job = s.job(main)
    assert (job["state"], job["exit_code"]) == ("completed", 0), job
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = fetch(s, main, cwd=elsewhere)  # from any directory: the ad says where
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(elsewhere.iterdir()) == []
    assert (run / "seen.txt").read_text() == (
        "a from dir\nb from subdir\nc from contents\nd from contents/deeper\nfrom the web\n"
    )
    out = (run / "logs" / "job.out").read_text()
    proxy = out.split("proxy=", 1)[1].split()[0]
    assert os.path.isabs(proxy) and proxy.endswith("/x509up_test"), out
    assert "mode=600 PROXY" in out
    assert out.startswith("stdin=line from input\n"), out
    assert (run / "logs" / "job.err").read_text() == "to-stderr\n"
    assert (run / "results" / "r1.txt").read_text() == "r1\n"
    assert (run / "results" / "deep" / "r2.txt").read_text() == "r2\n"
    assert (run / "renamed" / "final.txt").read_text() == "renamed\n"
    assert not (run / "rename_me.txt").exists()
    assert not (run / "extra.txt").exists(), "an unlisted file came back"
    # --dest keeps the old layout: everything below one directory
    flat = tmp_path / "flat"
    done = fetch(s, main, "--dest", str(flat), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (flat / "job.out").is_file() and (flat / "results" / "deep" / "r2.txt").is_file()

    # transfer_output_files = "": stdout and stderr only
    assert s.job(nothing)["state"] == "completed"
    done = fetch(s, "--all", "--wait", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"job {missing} is held" in done.stderr and f"job {bad_url} is held" in done.stderr
    assert sorted(p.name for p in (submit / "none").iterdir()) == ["e.txt", "o.txt"]
    assert (submit / "none" / "o.txt").read_text() == "only-streams\n"
    assert str(run / "seen.txt") not in done.stdout, "--all fetched a job's files again"
    # preserve_relative_paths: the input kept its path in the sandbox, the output below Iwd
    assert s.job(preserved)["state"] == "completed"
    assert (keep / "out" / "sub" / "o.txt").read_text() == "kept path\nkept path\n"

    # a listed output the job did not make: held, the reason names it
    held = s.job(missing)
    assert held["state"] == "held", held
    assert held["hold_reason_code"] == 12
    assert "nothere.txt" in held["hold_reason"] and "made.txt" not in held["hold_reason"]
    done = fetch(s, missing, cwd=tmp_path)  # what it did make can still be looked at
    assert done.returncode == 0, done.stderr
    assert (submit / "made.txt").read_text() == "here\n"

    # a URL input that cannot be fetched: held with the transfer-input code
    held = s.job(bad_url)
    assert held["state"] == "held" and held["hold_reason_code"] == 13, held
    assert "gone.txt" in held["hold_reason"] and "404" in held["hold_reason"]
    assert held["num_starts"] <= 1


RESUMABLE = """#!/bin/sh
if [ -f state.txt ]; then
    echo "resumed with: $(cat state.txt)" > result.txt
    exit 0
fi
echo first-run > state.txt
touch result.txt
echo ready
sleep 120
"""


def test_on_exit_or_evict_brings_an_evicted_runs_files_to_the_next_run(
    tmp_path: Path,
) -> None:
    """when_to_transfer_output = ON_EXIT_OR_EVICT: the batch system ends the
    pilot mid-job (SIGTERM to its process group); the files the run made go
    back with the eviction and the next run, on another pilot, starts with them."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    submit = tmp_path / "submit"
    submit.mkdir()
    (submit / "job.sh").write_text(RESUMABLE)
    (submit / "job.sh").chmod(0o755)
    entry = {
        "name": "local",
        "site": "LOCAL",
        "backend": "local",
        "cpus": 1,
        "memory": "auto",
        "disk": "auto",
        "walltime": 3600,
        "max_pilots": 1,
        "max_idle": 1,
        "max_per_cycle": 1,
        "work_dir": str(scratch),
    }
    with systems(tmp_path, http_timeout=30, claim_lease=60.0) as start:
        s = start(entries=[entry])
        [jid] = s.submit(
            """
executable = job.sh
when_to_transfer_output = ON_EXIT_OR_EVICT
transfer_output_files = state.txt, result.txt
output = run.out
stream_output = true
request_memory = 32
queue
""",
            submit,
        )
        running = wait_for(
            lambda: (j := s.job(jid))["state"] == "running" and j, "the job to start"
        )
        wait_for(  # the job says so on its streamed stdout once its state is written
            lambda: b"ready" in s.pool.stream(jid, limit=1024).data,
            "the first run to write its state",
        )
        [first] = [p["glidein_id"] for p in s.pilots() if p["pilot_id"] == running["pilot_id"]]
        os.killpg(s.pilot_pid(first), signal.SIGTERM)  # the batch system ends the pilot's job

        job = wait_for(
            lambda: (j := s.job(jid))["state"] == "completed" and j,
            "the job to complete on another pilot",
            timeout=240,
        )
        assert job["exit_code"] == 0 and job["pilot_id"] != running["pilot_id"]
        kinds = [e["type"] for e in s.pool.events(jid)]
        assert "evicted" in kinds, kinds
        done = fetch(s, jid, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert (submit / "result.txt").read_text() == "resumed with: first-run\n"
        assert (submit / "state.txt").read_text() == "first-run\n"
