"""Validation scripts in forked children: as isolated as a new interpreter, much cheaper.

Real forks of this test process running real scripts; each property a new
interpreter would give is checked on the forked child.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from glidewms.glidein.agent import forkrun, validation
from tests.unit.test_glidein_cvmfs import GLIDEIN


@pytest.fixture
def fork_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pilot forks only while single-threaded; earlier tests may have left daemon
    threads (servers) in this test process, which is harmless to these children."""
    monkeypatch.setattr(forkrun, "fork_allowed", lambda: True)


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "check.py"
    path.write_text(body)
    return str(path)


def test_the_child_has_its_own_argv_env_cwd_and_modules(tmp_path: Path) -> None:
    body = (
        "import os, sys\n"
        "os.environ['LEAK'] = 'x'\n"
        "import json as _j; sys.modules['leaked_module'] = _j\n"
        "print(sys.argv[1:], os.environ.get('ONLY'), os.environ.get('HOME'), os.getcwd(),\n"
        "      'pytest' in sys.modules, __name__, sys.path[0] == os.path.dirname(__file__))\n"
    )
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    status, output, timed_out = forkrun.run(
        script(tmp_path, body), ["conf"], {"ONLY": "1"}, str(cwd), 30
    )
    assert (status, timed_out) == (0, False)
    # pytest is already imported: the interpreter was forked, not started anew
    assert output.decode() == f"['conf'] 1 None {cwd} True __main__ True\n"
    assert "LEAK" not in os.environ and "leaked_module" not in sys.modules
    assert os.getcwd() != str(cwd)


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ("import sys; sys.exit(3)\n", 3, ""),
        ("import sys; sys.exit('usage: check.py GLIDEIN_CONFIG')\n", 1, "usage: check.py"),
        ("raise RuntimeError('broken check')\n", 1, "RuntimeError: broken check"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n", -signal.SIGKILL, ""),
        ("print('fine')\n", 0, "fine"),
    ],
)
def test_exit_statuses_are_those_of_a_process(
    tmp_path: Path, body: str, status: int, text: str
) -> None:
    got, output, _ = forkrun.run(script(tmp_path, body), [], {}, str(tmp_path), 30)
    assert got == status and text in output.decode()


def test_the_pilots_signal_handlers_do_not_run_in_the_child(tmp_path: Path) -> None:
    marker = tmp_path / "handler_ran"
    previous = signal.signal(signal.SIGTERM, lambda *_: marker.write_text(str(os.getpid())))
    try:
        body = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)\nprint('survived')\n"
        status, output, _ = forkrun.run(script(tmp_path, body), [], {}, str(tmp_path), 30)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert status == -signal.SIGTERM and b"survived" not in output
    assert not marker.exists()


def test_a_hanging_child_is_killed_with_what_it_started(tmp_path: Path) -> None:
    body = (
        "import subprocess, time\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        "open('child.pid', 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    )
    status, _, timed_out = forkrun.run(
        script(tmp_path, body), [], dict(os.environ), str(tmp_path), 1
    )
    assert timed_out and status == -signal.SIGKILL
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # reaped by init asynchronously
    assert (
        not Path(f"/proc/{child}").exists()
        or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
    )


def test_standard_scripts_give_the_same_results_forked(tmp_path: Path, fork_allowed: None) -> None:
    work = tmp_path / "work"
    import shutil

    for name in ("agent", "validation"):
        shutil.copytree(GLIDEIN / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    token = tmp_path / "token"
    token.write_text("a.e30.b\n")
    results = {}
    for fork in (False, True):
        config = work / "glidein_config"
        config.write_text(
            f"GLIDEIN_Work_Dir {work}\nGLIDEIN_Cpus auto\n"
            f"GLIDEIN_Memory auto\nGLIDEIN_Token_File {token}\n"
        )
        scripts = validation.discover(str(work), validation.read_values(str(config)))
        got = validation.run_all(scripts, str(config), 60, fork=fork)
        results[fork] = (
            [(r.name, r.status, r.slot_attrs) for r in got],
            validation.read_values(str(config)),
        )
    assert results[True][0] == results[False][0]
    assert all(status == "ok" for _, status, _ in results[True][0])
    same = ("GLIDEIN_Cpus", "GLIDEIN_Memory", "GPUs", "HAS_CONTAINER", "GLIDEIN_OS")
    assert {k: results[True][1].get(k) for k in same} == {k: results[False][1].get(k) for k in same}


def test_with_other_threads_running_a_new_interpreter_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(script(tmp_path, "import sys\nprint('pytest' in sys.modules)\n"))
    config = tmp_path / "glidein_config"
    config.write_text("")
    entry = validation.Script("check", str(path), "final")
    real = forkrun.fork_allowed
    monkeypatch.setattr(forkrun, "fork_allowed", lambda: True)
    assert validation.run_script(entry, str(config), 30, fork=True).output == "True\n"
    monkeypatch.setattr(forkrun, "fork_allowed", real)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert validation.run_script(entry, str(config), 30, fork=True).output == "False\n"
    finally:
        stop.set()
        other.join()
