"""Injection: a value that reaches a script, a config line or a command line.

The attack (issue 11): a frontend's `pool_url` with a newline became extra
`glidein_config` lines on every pilot (`GLIDEIN_Black_Hole_Jobs 0`, another
`GLIDEIN_Start`), and a group name with a trailing newline passed the name
check (`re.match` with `$`). Each hop is replayed with hostile values: the
frontend's configuration, the factory's request API (the real app, real
tokens), a request stored before the checks existed, the pilot's command line
(`pilot_args`), the real bootstrap and the real agent's glidein_config reader,
and the validation scripts' writers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

import glidewms.glidein.agent as agent_pkg
from glidewms.config.factory import EntryConfig, FactoryConfig
from glidewms.config.frontend import FrontendConfig, GroupConfig, Source
from glidewms.config.sites import BatchConfig, CondorConfig, SshConfig
from glidewms.factory.api import create_app
from glidewms.factory.pilot_args import checked, request_problem
from glidewms.factory.policy import EntryRequest
from glidewms.factory.store import StoredRequest
from glidewms.glidein.agent.config import UnsafeValue, config_line, load_config, parse_lines
from tests import harness
from tests.integration.factory_harness import FACTORY_URL, POOL_URL, FactoryFiles, stand_in
from tests.unit.test_bootstrap import (  # noqa: F401 (fixtures)
    BASH,
    SCRIPT,
    STUB_STAGE,
    StageServer,
    finish,
    stub_stage,
    token_file,
)

# What the attack appended: one more glidein_config line per hostile value.
INJECTED = "GLIDEIN_Black_Hole_Jobs 0"
# Line ends for someone downstream: bash and awk (\n), Python's splitlines (the rest).
LINE_BREAKS = ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x1e", "\x85", "\u2028", "\u2029"]
OTHER_CONTROLS = ["\x00", "\x1b", "\x7f", "\x9b"]
HOSTILE = [f"{brk}{INJECTED}" for brk in LINE_BREAKS] + [f"x{c}y" for c in OTHER_CONTROLS]
AGENT_DIR = Path(agent_pkg.__file__).parent


def refused(make: Any) -> str:
    with pytest.raises((ValidationError, ValueError)) as info:
        make()
    return str(info.value)


# -- the frontend's configuration --------------------------------------------------------


@pytest.mark.parametrize("tail", HOSTILE)
def test_frontend_urls_with_a_control_character_are_refused(tail: str) -> None:
    url = "http://127.0.0.1:9618" + tail
    for field in ("pool_url", "factory_url", "public_url"):
        assert field in refused(lambda f=field: FrontendConfig(**{f: url}))
    assert "url" in refused(lambda: Source(name="p", url=url))


@pytest.mark.parametrize(
    "url", ["ftp://pool", "http://", "http:///x", "http://pool:99999", "http://pool /x", "pool"]
)
def test_frontend_urls_are_parsed_not_prefix_matched(url: str) -> None:
    refused(lambda: FrontendConfig(pool_url=url))
    refused(lambda: Source(name="p", url=url))


def test_a_group_or_source_name_with_a_trailing_newline_is_refused() -> None:
    refused(lambda: GroupConfig(name="main\n"))
    refused(lambda: Source(name="pool\n", url="http://p"))
    assert GroupConfig(name="main").name == "main"


@pytest.mark.parametrize("tail", HOSTILE)
def test_group_values_given_to_pilots_are_one_line(tail: str) -> None:
    refused(lambda: GroupConfig(start_expr="true" + tail))
    refused(lambda: GroupConfig(container_image="/images/el9" + tail))


# -- the factory's configuration ---------------------------------------------------------


@pytest.mark.parametrize("tail", HOSTILE)
def test_entry_values_that_reach_pilots_or_scripts_are_one_line(tail: str) -> None:
    base = {"name": "e", "site": "S"}
    refused(lambda: EntryConfig(**{**base, "name": "e" + tail}))
    refused(lambda: EntryConfig(**{**base, "site": "S" + tail}))
    refused(lambda: EntryConfig(**{**base, "attributes": {"A" + tail: 1}}))
    refused(lambda: EntryConfig(**{**base, "attributes": {"A": "v" + tail}}))
    refused(lambda: EntryConfig(**{**base, "work_dir": "/scratch" + tail}))
    refused(lambda: EntryConfig(**{**base, "environment": {"X": "v" + tail}}))
    refused(lambda: BatchConfig(queue="debug" + tail))
    refused(lambda: BatchConfig(options=["--qos=normal" + tail]))
    refused(lambda: BatchConfig(log_dir="/logs" + tail))
    refused(lambda: SshConfig(host="h" + tail, user="u", key_file=Path("/k")))
    refused(lambda: SshConfig(host="h", user="u", key_file=Path("/k"), remote_dir="d" + tail))
    refused(lambda: CondorConfig(ce_host="ce.example.org" + tail))
    refused(lambda: CondorConfig(ce_host="ce", submit={"+A": '"x"' + tail}))


def test_names_with_a_trailing_newline_are_refused_everywhere() -> None:
    refused(lambda: EntryConfig(name="local\n", site="S"))
    refused(lambda: EntryConfig(name="e", site="S", attributes={"Attr\n": 1}))
    refused(lambda: BatchConfig(queue="debug\n"))
    refused(lambda: CondorConfig(ce_host="ce.example.org\n"))
    refused(lambda: CondorConfig(ce_host="ce", factory_tag="tag\n"))
    refused(lambda: CondorConfig(ce_host="ce", schedd="schedd@host\n"))


# -- the factory's request API (the real app) ---------------------------------------------


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[tuple[TestClient, FactoryFiles]]:
    out = tmp_path / "out"
    out.mkdir()
    files = FactoryFiles.create(tmp_path, stand_in(".", "true", poll=0.05), out)
    config = FactoryConfig(
        state_dir=tmp_path / "state",
        issuer_public_key=files.public,
        cycle_seconds=0.1,
        entries=[EntryConfig(name="local", site="LOCAL", max_pilots=2, max_per_cycle=2)],
    )
    app = create_app(config, FACTORY_URL, bootstrap=files.bootstrap, agent_dir=files.agent)
    with TestClient(app) as client:
        yield client, files
    (out / "release").touch()


def body(files: FactoryFiles, **changes: Any) -> dict[str, Any]:
    entry = {"idle": 1, "max_running": 1, **changes.pop("entry", {})}
    return {
        "pool_url": POOL_URL,
        "pilot_token": files.pilot_token(),
        "entries": {"local": entry},
        **changes,
    }


@pytest.mark.parametrize("tail", ["\n" + INJECTED, "\r" + INJECTED, "\x85" + INJECTED, "\x1b"])
def test_the_factory_refuses_hostile_request_values_naming_the_field(
    factory: tuple[TestClient, FactoryFiles], tail: str
) -> None:
    client, files = factory
    fe = files.headers("fe1", ["frontend"])
    vo = {"url": "http://fe/stage/vo/main" + tail, "manifest_sha256": "0" * 64}
    for hostile, field in [
        (body(files, pool_url=POOL_URL + tail), "pool_url"),
        (body(files, entry={"start_expr": "true" + tail}), "start_expr"),
        (body(files, entry={"container_image": "/img" + tail}), "container_image"),
        (body(files, vo_stage=vo), "url"),
    ]:
        response = client.put("/api/v1/requests/main", json=hostile, headers=fe)
        assert response.status_code == 422, (field, response.text)
        assert field in response.text
    assert client.get("/api/v1/requests", headers=fe).json() == []


def test_a_group_name_with_a_trailing_newline_is_refused_by_the_factory(
    factory: tuple[TestClient, FactoryFiles],
) -> None:
    client, files = factory
    fe = files.headers("fe1", ["frontend"])
    response = client.put("/api/v1/requests/main%0A", json=body(files), headers=fe)
    assert response.status_code == 422 and "not a valid name" in response.text
    assert client.get("/api/v1/requests", headers=fe).json() == []


def test_a_hostile_request_stored_before_the_checks_starts_no_pilot(
    factory: tuple[TestClient, FactoryFiles],
) -> None:
    """A request already in the database is refused for pilots (with its reason), not
    passed on: the same request without the newline then gets its pilots."""
    client, files = factory
    fe = files.headers("fe1", ["frontend"])
    service = client.app.state.factory  # type: ignore[attr-defined]
    # a request body without the stored values' checks: as in a database from before them
    service.store.put_request(
        "fe1", "main", POOL_URL + "\n" + INJECTED, {"local": {"idle": 1, "max_running": 1}}, None
    )
    (stored,) = service.store.requests()
    assert "control character" in (service.request_errors(stored).get("local") or "")
    cycles = service.cycles
    harness.wait_for(lambda: service.cycles >= cycles + 3, "three factory cycles", 30)
    assert client.get("/api/v1/glideins", headers=fe).json() == []
    assert client.put("/api/v1/requests/main", json=body(files), headers=fe).status_code == 200
    harness.wait_for(lambda: client.get("/api/v1/glideins", headers=fe).json(), "a pilot", 30)


# -- the pilot's command line --------------------------------------------------------------


@pytest.mark.parametrize("tail", HOSTILE)
def test_pilot_arguments_are_checked_on_the_way_out(tail: str) -> None:
    good = ["--factory", FACTORY_URL, "--pool", POOL_URL, "--attr", "A=1"]
    assert checked(good) == tuple(good)
    with pytest.raises(ValueError, match="--pool"):
        checked(["--factory", FACTORY_URL, "--pool", POOL_URL + tail])
    with pytest.raises(ValueError, match="--attr"):
        checked(["--pool", POOL_URL, "--attr", "GLIDEIN_Start=true" + tail])
    with pytest.raises(ValueError, match="--vo-stage"):
        checked(["--vo-stage", "ftp://fe/stage"])


def test_request_problem_names_the_hostile_value() -> None:
    def stored(**changes: Any) -> StoredRequest:
        values: dict[str, Any] = {
            "frontend": "fe1",
            "group": "main",
            "pool_url": POOL_URL,
            "entries": {"e": {"idle": 1, "max_running": 1}},
            "token_expires": None,
            "updated_at": 0.0,
        }
        return StoredRequest(**{**values, **changes})

    assert request_problem(stored(), "e") is None
    assert "pool_url" in (request_problem(stored(pool_url=POOL_URL + "\x85x"), "e") or "")
    entries = {"e": {"idle": 1, "max_running": 1, "start_expr": "true\u2028x"}}
    assert "start_expr" in (request_problem(stored(entries=entries), "e") or "")
    vo = {"url": "http://fe\n", "manifest_sha256": "0" * 64}
    assert "vo_stage.url" in (request_problem(stored(vo_stage=vo), "e") or "")
    with pytest.raises(ValidationError):
        EntryRequest(idle=1, max_running=1, start_expr="true\x0bX 1")


# -- the real bootstrap ------------------------------------------------------------------


def run_bootstrap(
    stage: StageServer, tmp_path: Path, token: Path, *changes: tuple[str, str]
) -> tuple[int, str]:
    options = {
        "--factory": stage.url,
        "--manifest-sha256": "0" * 64,
        "--pool": stage.url,
        "--glidein-id": "g-1",
        "--entry": "entry1",
        "--site": "SITE1",
        "--work-dir": str(tmp_path / "scratch"),
    }
    extra: list[str] = []
    for option, value in changes:
        if option in ("--attr", "--set"):
            extra += [option, value]
        else:
            options[option] = value
    (tmp_path / "scratch").mkdir(exist_ok=True)
    argv = [BASH, str(SCRIPT), *(w for pair in options.items() for w in pair), *extra]
    env = {
        "PATH": os.environ["PATH"],
        "GLIDEIN_PYTHON": sys.executable,
        "GLIDEIN_TOKEN_FILE": str(token),
        "STUB_MARKER": str(tmp_path / "marker"),
    }
    return finish(subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True))


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--pool", f"http://127.0.0.1:1\n{INJECTED}"),
        ("--pool", "http://127.0.0.1:1\r"),
        ("--pool", "ftp://127.0.0.1:1"),
        ("--vo-stage", "http://fe/vo\x85x"),
        ("--entry", f"entry1\n{INJECTED}"),
        ("--site", "SITE\u2028x"),
        ("--attr", f"GLIDEIN_Start=true\n{INJECTED}"),
        ("--attr", "GLIDEIN_Start=true\x1b[2J"),
        ("--set", f"GLIDEIN_Tail_Timeout=1\x0b{INJECTED}"),
    ],
)
def test_the_bootstrap_refuses_hostile_values_as_a_validation_failure(
    stub_stage: StageServer,  # noqa: F811
    tmp_path: Path,
    token_file: Path,  # noqa: F811
    option: str,
    value: str,
) -> None:
    extra = [("--vo-manifest-sha256", "0" * 64)] if option == "--vo-stage" else []
    rc, stderr = run_bootstrap(stub_stage, tmp_path, token_file, (option, value), *extra)
    assert rc == 4, stderr
    assert "validation_failed" in stderr and option.split("/")[0] in stderr
    assert not (tmp_path / "marker").exists()  # no agent, so no glidein_config was read
    (report,) = stub_stage.reports  # said to the factory
    assert (report["exit_reason"], report["exit_code"]) == ("validation_failed", 4)
    assert not any("/stage/" in path for _, path, _ in stub_stage.requests)  # nothing fetched
    assert list((tmp_path / "scratch").iterdir()) == []


@pytest.mark.parametrize(
    ("option", "value"),
    [("--factory", "http://127.0.0.1:1/\nX"), ("--glidein-id", "g\n1"), ("--glidein-id", "../g")],
)
def test_values_the_report_would_use_are_refused_without_a_report(
    stub_stage: StageServer,  # noqa: F811
    tmp_path: Path,
    token_file: Path,  # noqa: F811
    option: str,
    value: str,
) -> None:
    rc, stderr = run_bootstrap(stub_stage, tmp_path, token_file, (option, value))
    assert rc == 4 and "validation_failed" in stderr, stderr
    assert stub_stage.requests == [] and stub_stage.reports == []
    assert list((tmp_path / "scratch").iterdir()) == []


def test_clean_values_with_blanks_and_non_ascii_letters_still_start_the_agent(
    stub_stage: StageServer,  # noqa: F811
    tmp_path: Path,
    token_file: Path,  # noqa: F811
) -> None:
    """The checks refuse control characters, not text: `two words`, `Zürich` pass."""
    stage = StageServer(STUB_STAGE)
    try:
        from tests.unit.test_bootstrap import manifest_of, sha

        rc, stderr = run_bootstrap(
            stage,
            tmp_path,
            token_file,
            ("--manifest-sha256", sha(manifest_of(STUB_STAGE))),
            ("--attr", "Label=two words"),
            ("--attr", "City=Zürich"),
        )
    finally:
        stage.close()
    assert rc == 0, stderr
    info = json.loads((tmp_path / "marker").read_text())
    config = dict(line.split(" ", 1) for line in info["config"].splitlines())
    assert (config["Label"], config["City"]) == ("two words", "Zürich")


# -- the real agent's glidein_config reader and writers ------------------------------------


@pytest.mark.parametrize("brk", [b for b in LINE_BREAKS if b != "\n"] + OTHER_CONTROLS)
def test_the_agent_refuses_a_config_line_with_a_control_character(tmp_path: Path, brk: str) -> None:
    path = tmp_path / "glidein_config"
    path.write_text(
        f"GLIDEIN_Pool_URL http://127.0.0.1:1{brk}{INJECTED}\nGLIDEIN_Id g-1\n",
        encoding="utf-8",
        newline="",
    )
    with pytest.raises(UnsafeValue, match="line 1"):
        load_config(str(path))
    done = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(path)],
        env={**os.environ, "PYTHONPATH": str(AGENT_DIR.parent), "GLIDEIN_TOKEN_FILE": "/dev/null"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 4, done.stderr  # ExitReason.VALIDATION_FAILED
    assert "validation failed: glidein_config refused" in done.stderr


def test_the_agent_reads_tabs_and_blanks_as_before() -> None:
    values = parse_lines("A\tone\tvalue\n# comment\nB  two words \n")
    assert values == {"A": "one\tvalue", "B": "two words"}


def test_the_config_writers_refuse_control_characters(tmp_path: Path) -> None:
    assert config_line("K", "a value") == "K a value\n"
    for key, value in [("K", "v\nX 1"), ("K", "v\x85"), ("K\n", "v"), ("K L", "v"), ("#K", "v")]:
        with pytest.raises(UnsafeValue):
            config_line(key, value)
    config = tmp_path / "glidein_config"
    config.write_text("GLIDEIN_Id g\n")
    validation_dir = AGENT_DIR.parent / "validation"
    script = f"""
import sys
sys.path.insert(0, {str(validation_dir)!r})
import gconfig
s = gconfig.Script({str(config)!r})
for value in ("v\\nX 1", "v\\u2028X 1", "v\\x1b"):
    try:
        s.add("K", value)
    except ValueError:
        print("refused")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.split() == ["refused"] * 3, done.stderr
    add = f'source {validation_dir}/gconfig.sh "$1"; gconfig_add K "$2"'
    shell = subprocess.run(
        [BASH, "-c", add, "x", str(config), f"v\n{INJECTED}"],
        capture_output=True,
        text=True,
    )
    assert shell.returncode == 1 and "cannot write" in shell.stderr
    assert config.read_text() == "GLIDEIN_Id g\n"  # nothing was appended


# -- the CLI against a real pool ---------------------------------------------------------

TERMINAL_HOSTILE = "[/bold]\x1b]0;pwned\x07\x1b[2J\r\u202e"


def test_glidewms_q_shows_hostile_job_data_literally_to_every_user(tmp_path: Path) -> None:
    """A job whose arguments and hold reason carry markup and terminal escapes: `q`,
    `q -l` and `history` run (as a user would, another process) without a crash, and
    no raw escape reaches their output."""
    from glidewms.submit import parse_submit

    with harness.systems(tmp_path) as start:
        s = start()
        description = parse_submit(
            "executable = /bin/echo\narguments = x\nrequirements = TARGET.Cpus > 100000\nqueue\n",
            "t.sub",
            tmp_path,
        )
        ad = description.jobs[0].ad_text()
        hostile = {"ad": ad, "sandbox": [], "args": [TERMINAL_HOSTILE, "[bold]x"], "env": {}}
        [jid] = s.pool._call("POST", "/jobs", json={"jobs": [hostile]})["job_ids"]
        assert s.pool.act("hold", [jid], reason=f"held: {TERMINAL_HOSTILE}") == [jid]
        env = {
            **os.environ,
            "GLIDEWMS_POOL_URL": s.inst.services["pool"].url,
            "GLIDEWMS_TOKEN_FILE": str(s.inst.token_file("user")),
            "COLUMNS": "400",
        }
        for command in (["q"], ["q", "-nobatch"], ["q", "-l"], ["history"]):
            done = subprocess.run(
                [sys.executable, "-m", "glidewms", *command],
                env=env,
                capture_output=True,
                timeout=60,
            )
            assert done.returncode == 0, (command, done.stderr)
            for raw in (b"\x1b", b"\x07", b"\r", "\u202e".encode()):
                assert raw not in done.stdout + done.stderr, (command, raw)
            if command == ["q", "-nobatch"]:  # the batch view shows no arguments
                assert b"[/bold]" in done.stdout and b"\\x1b]0;pwned" in done.stdout


@pytest.mark.parametrize(
    "job",
    [
        {"cmd": "/bin/true", "env": {"A=B": "x"}},
        {"cmd": "/bin/true", "env": {"": "x"}},
        {"cmd": "/bin/true", "env": {"A": "x\0y"}},
        {"cmd": "/bin/true", "args": ["a\0b"]},
        {"cmd": "/bin/tr\0ue"},
    ],
)
def test_a_claim_exec_cannot_take_is_refused_by_name_not_a_crash(job: dict[str, Any]) -> None:
    from glidewms.glidein.agent.jobs import JobSetupError, JobSpec

    with pytest.raises(JobSetupError):
        JobSpec.from_claim(job)
