"""The pilot agent: glidein_config, resources, job sandboxes, HTTP, and whole pilot runs.

Whole runs talk to `FakePool`, an in-test stand-in for the pool and the
factory's report endpoint; the real services are tested end-to-end elsewhere.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import glidewms.glidein.agent as agent_pkg
from glidewms.glidein.agent.agent import Agent
from glidewms.glidein.agent.claims import ClaimRunner
from glidewms.glidein.agent.completions import CompletionQueue
from glidewms.glidein.agent.config import ConfigError, build_config, parse_lines, typed_value
from glidewms.glidein.agent.http import Api, HttpStatusError
from glidewms.glidein.agent.jobs import (
    JobProcess,
    JobSetupError,
    JobSpec,
    job_environment,
    outputs_to_upload,
    sandbox_name,
    snapshot,
    stream_name,
)
from glidewms.glidein.agent.policy import State, gather_wait, heartbeat_interval, next_step
from glidewms.glidein.agent.resources import (
    Resources,
    detect_resources,
    gpu_properties,
    htcondor_arch,
    node_name,
    os_attributes,
    slot_ad,
)

TOKEN = "pilot-token-s3cr3t-for-tests"
AGENT_DIR = Path(agent_pkg.__file__).parent
WAIT = 60  # seconds before a test gives up on an event that should have happened


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- fake pool


class FakePool:
    """A protocol stand-in for the pool API and the factory's report endpoint.

    It implements just enough of docs/protocol.md for one pilot: register,
    cycle (takes results, hands out `self.claims` in order, then long-polls),
    files GET/PUT (content-addressed), heartbeat (with scripted `kill`/`drain`
    or 410), deregister and the final report. Every call must carry the pilot
    token; every answer names the protocol `version`, as the real services do.
    `/test/started` (no token) lets a job tell the test it runs. The real pool
    is tested end-to-end elsewhere.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.claims: list[dict[str, Any]] = []
        self.registered: list[dict[str, Any]] = []
        self.claim_requests: list[dict[str, Any]] = []
        self.completed: dict[str, dict[str, Any]] = {}
        self.heartbeats: list[dict[str, Any]] = []
        self.deregistered: list[dict[str, Any]] = []
        self.reports: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self.log_status = 200
        self.started_jobs: list[dict[str, Any]] = []
        self.kill_when_started: set[str] = set()
        self.drain = False
        self.gone = False
        # True: answer `turns_renew_leases` (turns renew, cycle answers kill/drain,
        # heartbeats never say kill: what reaches the pilot came by its turns)
        self.turns_renew = False
        self.version: str | None = "1.0"  # the Glidewms-Api-Version header (None: not sent)
        self.version_after_register: str | None = None  # the pool is "upgraded" then
        self.cycles: list[dict[str, Any]] = []  # bodies of cycle calls
        self.accepts_results = True  # False: cycle answers that it holds no such claim
        self.register_status = 201
        self.unauthorized = 0
        self.black_holes: list[dict[str, Any]] = []  # bodies of black-hole calls
        self.black_hole_status = 200  # another: the call fails
        self.events: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.closing = threading.Event()
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self, "GET")

            def do_POST(self) -> None:
                fake.handle(self, "POST")

            def do_PUT(self) -> None:
                fake.handle(self, "PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakePool:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

    def add_file(self, data: bytes) -> str:
        self.files[sha(data)] = data
        return sha(data)

    def send(self, h: BaseHTTPRequestHandler, status: int, obj: Any = None) -> None:
        body = b"" if obj is None else json.dumps(obj).encode()
        h.send_response(status)
        if self.version is not None:
            h.send_header("Glidewms-Api-Version", self.version)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        path = h.path
        if path == "/test/started":
            with self.lock:
                self.started_jobs.append(json.loads(raw))
            self.events["started"].set()
            return self.send(h, 200, {})
        if h.headers.get("Authorization") != f"Bearer {TOKEN}":
            with self.lock:
                self.unauthorized += 1
            return self.send(h, 401, {"detail": "missing bearer token"})
        body = json.loads(raw) if raw and method == "POST" else None
        if m := re.fullmatch(r"/api/v1/files/([0-9a-f]{64})", path):
            if method == "PUT":
                if sha(raw) != m[1]:
                    return self.send(h, 422, {"detail": "hash mismatch"})
                self.files[m[1]] = raw
                return self.send(h, 201, {})
            data = self.files.get(m[1])
            if data is None:
                return self.send(h, 404, {"detail": "no such file"})
            h.send_response(200)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return None
        if path == "/api/v1/pilots":
            self.registered.append(body)
            if self.register_status != 201:
                return self.send(h, self.register_status, {"detail": "not a pilot of ours"})
            answer = {"pilot_id": "p1", "lease_seconds": 30, "heartbeat_seconds": 1}
            if self.turns_renew:
                answer["turns_renew_leases"] = True
            self.send(h, 201, answer)
            self.version = self.version_after_register or self.version
            return None
        if path == "/api/v1/pilots/p1/cycle":
            with self.lock:
                self.cycles.append(body)
            completed = {}
            for done in body.get("completions", []):
                self.completed[done["claim_id"]] = {
                    k: done[k] for k in ("exit_code", "outputs", "wall_seconds")
                }
                completed[done["claim_id"]] = self.accepts_results
                self.events["complete"].set()
            if body.get("max_jobs", 1) == 0:
                return self.send(h, 200, {"completed": completed, "claims": []})
            self.claim_requests.append(body)
            with self.lock:
                batch, self.claims = (
                    self.claims[: body["max_jobs"]],
                    self.claims[body["max_jobs"] :],
                )
            if not batch and not completed:
                self.closing.wait(body["wait"])
            answer = {"completed": completed, "claims": batch}
            if "claims" in body:  # a turn that lists its claims: answered as a heartbeat
                started = self.events["started"].is_set()
                kill = [c for c in body["claims"] if started and c in self.kill_when_started]
                answer.update(drain=self.drain, kill=kill)
            return self.send(h, 200, answer)
        if path == "/api/v1/pilots/p1/heartbeat":
            self.heartbeats.append(body)
            if self.gone:
                return self.send(h, 410, {"detail": "pilot p1 is lost"})
            started = self.events["started"].is_set() and not self.turns_renew
            kill = [c for c in body["claims"] if started and c in self.kill_when_started]
            return self.send(h, 200, {"lease_seconds": 30, "drain": self.drain, "kill": kill})
        if path == "/api/v1/pilots/p1/black-hole":
            self.black_holes.append(body)
            if self.black_hole_status != 200:
                return self.send(h, self.black_hole_status, {"detail": "down"})
            requeued = [c["claim_id"] for c in body["claims"]]
            return self.send(h, 200, {"requeued": requeued, "held": [], "refused": {}})
        if path == "/api/v1/pilots/p1/deregister":
            self.deregistered.append(body)
            return self.send(h, 200, {})
        if re.fullmatch(r"/api/v1/glideins/[^/]+/log", path):
            if self.log_status != 200:
                return self.send(h, self.log_status, {"detail": "Not Found"})
            self.logs.append(body)
            return self.send(h, 200, {"appended": len(body["records"])})
        if re.fullmatch(r"/api/v1/glideins/[^/]+/report", path):
            self.reports.append(body)
            self.events["report"].set()
            return self.send(h, 200, {})
        return self.send(h, 404, {"detail": f"no route {method} {path}"})


@pytest.fixture
def pool() -> Iterator[FakePool]:
    with FakePool() as fake:
        yield fake


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def config_text(pool: FakePool, work: Path, token_file: Path, **extra: Any) -> str:
    values = {
        "GLIDEIN_Factory_URL": pool.url,
        "GLIDEIN_Pool_URL": pool.url,
        "GLIDEIN_Id": "g-1",
        "GLIDEIN_Entry_Name": "entry1",
        "GLIDEIN_Site": "TEST_SITE",
        "GLIDEIN_Idle_Timeout": 2,
        "GLIDEIN_Lifetime": 3600,
        "GLIDEIN_Cpus": 2,
        "GLIDEIN_Memory": 1024,
        "GLIDEIN_Work_Dir": work,
        "GLIDEIN_Token_File": token_file,
        "HAS_TEST": "true",
        "Speed": "2.5",
        "GLIDEIN_Attrs": "HAS_TEST,Speed",
        **extra,
    }
    return "".join(f"{k} {v}\n" for k, v in values.items())


PY_JOB = b"""import json, os, sys, time, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
body = json.dumps({"pid": os.getpid()}).encode()
opener.open(urllib.request.Request(sys.argv[1] + "/test/started", data=body), timeout=10)
time.sleep(600)
"""


def claim_for(pool: FakePool, claim_id: str, files: dict[str, bytes], **job: Any) -> dict:
    """A claim as the pool hands it out; the first file is the executable."""
    sandbox = [
        {"name": name, "sha256": pool.add_file(data), "executable": i == 0}
        for i, (name, data) in enumerate(files.items())
    ]
    spec = {
        "cmd": next(iter(files)),
        "args": [],
        "env": {},
        "sandbox": sandbox,
        "out": None,
        "err": None,
        "transfer_output": None,
        "request": {"cpus": 1, "memory": 100, "disk": 1000},
        **job,
    }
    return {"claim_id": claim_id, "job_id": f"{claim_id}.0", "lease_seconds": 30, "job": spec}


def sleeping_python_claim(pool: FakePool, claim_id: str) -> dict:
    return claim_for(
        pool, claim_id, {"job.py": PY_JOB}, cmd=sys.executable, args=["job.py", pool.url]
    )


def agent_in_thread(cfg_text: str, work: Path) -> tuple[threading.Thread, dict[str, Any]]:
    work.mkdir(exist_ok=True)
    cfg = build_config(parse_lines(cfg_text), str(work))
    agent = Agent(cfg, total=Resources(2, 1024, 10**6), backoff=0.05, kill_grace=5)
    box: dict[str, Any] = {"agent": agent}
    thread = threading.Thread(target=lambda: box.update(rc=agent.run(install_signals=False)))
    thread.start()
    return thread, box


# --------------------------------------------------------------------------- config


def test_glidein_config_lines_comments_and_last_value_wins() -> None:
    text = "# comment\n\nGLIDEIN_Site  A\nGLIDEIN_Site B C\nKEY\tvalue with  spaces \nEMPTY\n"
    assert parse_lines(text) == {"GLIDEIN_Site": "B C", "KEY": "value with  spaces", "EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("-2", -2),
        ("+7", 7),
        ("1.5", 1.5),
        ("1e3", 1000.0),
        (".5", 0.5),
        ("true", True),
        ("FALSE", False),
        ("True", True),
        ("nan", "nan"),
        ("inf", "inf"),
        ("1_000", "1_000"),
        ("0x10", "0x10"),
        ("abc", "abc"),
        ("", ""),
        ("1.2.3", "1.2.3"),
    ],
)
def test_attribute_values_get_their_classad_type(text: str, value: Any) -> None:
    got = typed_value(text)
    assert got == value
    assert type(got) is type(value)


def test_build_config_types_attributes_and_defaults(tmp_path: Path) -> None:
    values = parse_lines(
        "GLIDEIN_Pool_URL http://pool:1/\nGLIDEIN_Id g1\n"
        "GLIDEIN_Token_File /t\nGLIDEIN_Attrs A, B ,C\nA 4\nB yes\nC false\n"
        "GLIDEIN_Cpus auto\nGLIDEIN_Memory 2048\n"
    )
    cfg = build_config(values, str(tmp_path))
    assert cfg.pool_url == "http://pool:1"
    assert cfg.attrs == {"A": 4, "B": "yes", "C": False}
    assert (cfg.cpus, cfg.memory, cfg.heartbeat) == (None, 2048, None)
    assert (cfg.idle_timeout, cfg.lifetime, cfg.work_dir) == (1200, 86400, str(tmp_path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("GLIDEIN_Id g1\nGLIDEIN_Token_File /t\n", "GLIDEIN_Pool_URL"),
        ("GLIDEIN_Pool_URL u\nGLIDEIN_Id g\nGLIDEIN_Token_File /t\nGLIDEIN_Attrs X\n", "X"),
        (
            "GLIDEIN_Pool_URL u\nGLIDEIN_Id g\nGLIDEIN_Token_File /t\nGLIDEIN_Idle_Timeout 5m\n",
            "GLIDEIN_Idle_Timeout",
        ),
        (
            "GLIDEIN_Pool_URL u\nGLIDEIN_Id g\nGLIDEIN_Token_File /t\nGLIDEIN_Cpus 0\n",
            "GLIDEIN_Cpus",
        ),
    ],
)
def test_bad_glidein_config_is_refused_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(parse_lines(text), "/tmp")


def test_token_file_falls_back_to_the_bootstrap_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIDEIN_TOKEN_FILE", "/run/token")
    cfg = build_config(parse_lines("GLIDEIN_Pool_URL u\nGLIDEIN_Id g\n"), "/tmp")
    assert cfg.token_file == "/run/token"
    monkeypatch.delenv("GLIDEIN_TOKEN_FILE")
    with pytest.raises(ConfigError, match="Token"):
        build_config(parse_lines("GLIDEIN_Pool_URL u\nGLIDEIN_Id g\n"), "/tmp")


# --------------------------------------------------------------------------- resources


def minimal_cfg(tmp_path: Path, extra: str = "") -> Any:
    text = f"GLIDEIN_Pool_URL u\nGLIDEIN_Id g7\nGLIDEIN_Token_File /t\nGLIDEIN_Site S\n{extra}"
    return build_config(parse_lines(text), str(tmp_path))


def test_explicit_resources_win_over_detection(tmp_path: Path) -> None:
    cfg = minimal_cfg(tmp_path, "GLIDEIN_Cpus 3\nGLIDEIN_Memory 2048\n")
    res = detect_resources(cfg, meminfo=str(tmp_path / "missing"))
    assert (res.cpus, res.memory) == (3, 2048)
    assert 0 < res.disk <= shutil.disk_usage(tmp_path).total // 1024


def test_auto_resources_come_from_affinity_and_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemFree:  100 kB\nMemTotal:       8388608 kB\n")
    res = detect_resources(minimal_cfg(tmp_path), meminfo=str(meminfo))
    assert res.cpus == len(os.sched_getaffinity(0))
    assert res.memory == 8192


def test_auto_resources_fall_back_without_affinity_or_meminfo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 5)
    res = detect_resources(minimal_cfg(tmp_path), meminfo=str(tmp_path / "missing"))
    pages = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    assert (res.cpus, res.memory) == (5, pages)


@pytest.mark.parametrize(
    ("release", "expected"),
    [
        (
            {"ID": "debian", "VERSION_ID": "12"},
            {
                "OpSys": "LINUX",
                "OpSysName": "Debian",
                "OpSysMajorVer": 12,
                "OpSysAndVer": "Debian12",
            },
        ),
        (
            {"ID": "almalinux", "VERSION_ID": "9.3"},
            {
                "OpSys": "LINUX",
                "OpSysName": "AlmaLinux",
                "OpSysMajorVer": 9,
                "OpSysAndVer": "AlmaLinux9",
            },
        ),
        ({"ID": "arch"}, {"OpSys": "LINUX", "OpSysName": "Arch"}),
        ({}, {"OpSys": "LINUX"}),
    ],
)
def test_os_attributes_follow_htcondor(release: dict[str, str], expected: dict) -> None:
    assert os_attributes(release) == expected


def test_arch_is_named_as_htcondor_does() -> None:
    assert [htcondor_arch(m) for m in ("x86_64", "AMD64", "aarch64", "ppc64le", "riscv64")] == [
        "X86_64",
        "X86_64",
        "aarch64",
        "ppc64le",
        "riscv64",
    ]


def test_slot_ad_has_resources_identity_and_typed_attributes(tmp_path: Path) -> None:
    cfg = minimal_cfg(tmp_path, "GLIDEIN_Attrs GPUs,Cpus,Arch\nGPUs 1\nCpus 64\nArch ppc64le\n")
    ad = slot_ad(
        cfg, Resources(4, 8000, 123), to_die=1000.5, os_release={"ID": "debian", "VERSION_ID": "12"}
    )
    # an entry cannot claim resources the agent does not track (GPUs: its detected 0)
    assert ad["Cpus"] == 4
    assert (ad["Memory"], ad["Disk"], ad["GPUs"], ad["Arch"]) == (8000, 123, 0, "ppc64le")
    assert "AvailableGPUs" not in ad
    assert (ad["GLIDEIN_Id"], ad["GLIDEIN_Site"], ad["OpSysAndVer"]) == ("g7", "S", "Debian12")
    assert ad["GLIDEIN_ToDie"] == 1000 and ad["PartitionableSlot"] is True


def test_slot_ad_names_the_node_and_its_domains_and_an_entry_may_override_them(
    tmp_path: Path,
) -> None:
    ad = slot_ad(minimal_cfg(tmp_path), Resources(1, 100, 10), to_die=0)
    machine = node_name()
    assert machine and (not machine.startswith("localhost") or not socket.gethostname())
    # HTCondor's defaults: a node shares its file system and user ids with itself;
    # the domain is what the submit side writes for should_transfer_files = NO
    assert ad["Machine"] == machine
    assert ad["FileSystemDomain"] == ad["UidDomain"] == socket.getfqdn()
    assert (ad["OpSys"], ad["Arch"]) == ("LINUX", htcondor_arch(os.uname().machine))
    assert isinstance(ad["Cpus"], int) and ad["GPUs"] == 0
    cfg = minimal_cfg(
        tmp_path,
        "GLIDEIN_Attrs FileSystemDomain,UidDomain\nFileSystemDomain site.edu\nUidDomain site.edu\n",
    )
    ad = slot_ad(cfg, Resources(1, 100, 10), to_die=0)
    assert (ad["Machine"], ad["FileSystemDomain"], ad["UidDomain"]) == (
        machine,
        "site.edu",
        "site.edu",
    )


V100 = {
    "Id": "GPU-a",
    "DeviceName": "Tesla V100-SXM2-16GB",
    "Capability": 7.0,
    "GlobalMemoryMb": 16160,
    "MaxSupportedVersion": 12020,
    "DriverVersion": 12.2,
}


@pytest.mark.parametrize(
    "text, gpus, expected",
    [
        (json.dumps([V100, {**V100, "Id": "GPU-b"}]), 2, [V100, {**V100, "Id": "GPU-b"}]),
        # no more property ads than GPUs this pilot offers (its share of the node)
        (json.dumps([V100, {**V100, "Id": "GPU-b"}]), 1, [V100]),
        # unknown keys and wrong types are dropped, numbers keep their ClassAd type
        (
            json.dumps([{**V100, "Evil": "x", "Capability": "8.0", "GlobalMemoryMb": 1.5e3}]),
            1,
            [{**{k: v for k, v in V100.items() if k != "Capability"}, "GlobalMemoryMb": 1500}],
        ),
        (json.dumps([{"Id": "x" * 500}]), 1, [{"Id": "x" * 128}]),
        ("not json", 1, []),
        (json.dumps({"Id": "GPU-a"}), 1, []),
        (json.dumps(["GPU-a"]), 1, []),
        (json.dumps([{"Capability": True, "GlobalMemoryMb": 2**60}]), 1, [{}]),
        ("", 1, []),
    ],
)
def test_available_gpus_are_read_back_bounded(text: str, gpus: int, expected: list) -> None:
    assert gpu_properties(text, gpus) == expected


def test_slot_ad_carries_available_gpus_as_property_ads(tmp_path: Path) -> None:
    cfg = minimal_cfg(tmp_path, f"GLIDEIN_GPUs_Properties {json.dumps([V100])}\n")
    ad = slot_ad(cfg, Resources(1, 100, 10, gpus=1), to_die=0)
    assert (ad["GPUs"], ad["AvailableGPUs"]) == (1, [V100])
    # an entry cannot claim GPUs properties either
    cfg = minimal_cfg(tmp_path, "GLIDEIN_Attrs AvailableGPUs\nAvailableGPUs x\n")
    assert "AvailableGPUs" not in slot_ad(cfg, Resources(1, 100, 10), to_die=0)


# --------------------------------------------------------------------------- policy


def state(**changes: Any) -> State:
    """10 s into a pilot with a 100 s idle timeout, 1000 s to live, nothing running."""
    base = {
        "now": 10.0,
        "idle_since": 0.0,
        "idle_timeout": 100.0,
        "deadline": 1000.0,
        "draining": False,
        "running": 0,
        "free_cpus": 2,
        "free_memory": 1000,
    }
    return State(**{**base, **changes})


@pytest.mark.parametrize(
    ("facts", "action", "seconds", "reason"),
    [
        ({}, "claim", 90.0, None),  # up to the idle time left
        ({"now": 95.0}, "claim", 5.0, None),  # never long-poll past the idle timeout
        ({"now": 100.0}, "exit", 0.0, "idle_timeout"),
        ({"now": 500.0, "running": 1}, "claim", 100.0, None),  # busy: not idle
        ({"idle_timeout": 900.0}, "claim", 120.0, None),  # MAX_CLAIM_WAIT
        ({"idle_timeout": 3.0, "running": 1}, "claim", 3.0, None),  # can stop soon after the job
        ({"deadline": 12.0}, "claim", 2.0, None),  # no long-poll past the lifetime
        ({"running": 2, "free_cpus": 0}, "wait", 20.0, None),  # full slot
        ({"running": 1, "free_memory": 0}, "wait", 20.0, None),
        ({"draining": True, "running": 1}, "wait", 20.0, None),
        ({"draining": True}, "exit", 0.0, "idle_timeout"),  # a drain is a benign retirement
        ({"now": 1000.0, "idle_since": 999.0, "running": 1}, "wait", 20.0, None),
        ({"now": 1000.0, "idle_since": 999.0}, "exit", 0.0, "lifetime"),
    ],
)
def test_next_step(facts: dict[str, Any], action: str, seconds: float, reason: str | None) -> None:
    step = next_step(state(**facts), lifetime=1000)
    assert (step.action, step.seconds, step.reason) == (action, seconds, reason)


@pytest.mark.parametrize(
    ("pool_seconds", "lease", "local", "interval"),
    [
        (20, 60, 0, 20),
        (20, 30, 0, 10),
        (20, 60, 5, 5),
        (20, 60, 50, 20),
        (0, 0, 0, 60),
        (0, 0, 7, 7),
        (0.1, 0, 0, 1),
    ],
)
def test_heartbeat_interval(
    pool_seconds: float, lease: float, local: float, interval: float
) -> None:
    assert heartbeat_interval(pool_seconds, lease, local) == interval


@pytest.mark.parametrize(
    ("running", "free", "batch", "waited", "pause"),
    [
        (0, 1, 16, 0.0, 0.0),  # idle pilot: claim at once (dispatch latency)
        (15, 1, 16, 0.0, 0.004),  # one core free among 16 busy: wait for more
        (15, 1, 16, 0.003, 0.001),  # ...counted from when the first became free
        (15, 1, 16, 0.004, 0.0),  # ...and never longer than the gather time
        (8, 8, 16, 0.0, 0.004),  # half a turn free: still wait
        (0, 16, 16, 0.0, 0.0),  # a whole turn free: claim
        (1, 1, 2, 0.0, 0.004),  # a 2-core pilot with one job running waits for it
        (3, 16, 16, 0.0, 0.0),  # more free than a turn takes (a 19-core pilot): claim
        (0, 1, 1, 0.0, 0.0),
    ],  # a 1-core pilot never waits
)
def test_gather_wait(running: int, free: int, batch: int, waited: float, pause: float) -> None:
    assert gather_wait(running, free, batch, waited, 0.004) == pytest.approx(pause)


# --------------------------------------------------------------------------- jobs


def make_job(tmp_path: Path, script: str, **spec: Any) -> tuple[JobSpec, Path]:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (sandbox / "job.sh").write_text("#!/bin/sh\n" + script)
    (sandbox / "job.sh").chmod(0o755)
    files = [{"name": "job.sh", "sha256": "0" * 64, "executable": True}]
    return JobSpec.from_claim({"cmd": "job.sh", "sandbox": files, **spec}), sandbox


def run(spec: JobSpec, sandbox: Path) -> int:
    return JobProcess(spec, str(sandbox), job_environment(spec, str(sandbox), {})).run()


def test_job_runs_in_its_sandbox_and_new_or_changed_files_are_outputs(tmp_path: Path) -> None:
    spec, sandbox = make_job(
        tmp_path,
        'echo "out in $PWD"; echo oops >&2\n'
        "echo more >> input.txt; echo r > new.txt; mkdir d; echo x > d/f\n"
        "ln -s /etc/hostname link\n",
    )
    (sandbox / "input.txt").write_text("in\n")
    (sandbox / "unchanged.txt").write_text("same\n")
    baseline = snapshot(str(sandbox))
    assert run(spec, sandbox) == 0
    # streams the job did not name go to /dev/null, as HTCondor's output/error default
    assert sorted(p.name for p in sandbox.iterdir()) == [
        "d",
        "input.txt",
        "job.sh",
        "link",
        "new.txt",
        "unchanged.txt",
    ]
    assert outputs_to_upload(spec, str(sandbox), baseline) == ["input.txt", "new.txt"]


def test_named_streams_are_captured_in_the_sandbox(tmp_path: Path) -> None:
    spec, sandbox = make_job(
        tmp_path,
        'echo "out in $PWD"; echo oops >&2\n',
        out="/submit/job.out",
        err="/submit/job.err",
    )
    baseline = snapshot(str(sandbox))
    assert run(spec, sandbox) == 0
    assert (sandbox / "job.out").read_text() == f"out in {sandbox}\n"
    assert (sandbox / "job.err").read_text() == "oops\n"
    assert outputs_to_upload(spec, str(sandbox), baseline) == ["job.out", "job.err"]


def test_transfer_output_names_only_safe_regular_files(tmp_path: Path) -> None:
    spec, sandbox = make_job(
        tmp_path,
        "echo a > a.txt; echo b > b.txt; mkdir sub\n"
        "echo c > sub/c.txt; ln -s /etc/hostname link; ln -s / up\n",
        out="/submit/dir/job.out",
        err="/submit/dir/job.out",
        transfer_output=[
            "a.txt",
            "sub/c.txt",
            "missing",
            "link",
            "../sandbox/a.txt",
            "/etc/hostname",
            "up/etc/hostname",
        ],
    )
    baseline = snapshot(str(sandbox))
    assert run(spec, sandbox) == 0
    assert outputs_to_upload(spec, str(sandbox), baseline) == ["job.out", "a.txt", "sub/c.txt"]


def test_stream_names_map_submit_paths_into_the_sandbox(tmp_path: Path) -> None:
    assert stream_name("/home/alice/run/out.0") == "out.0"
    assert stream_name(None) is None
    assert stream_name("/dev/null") is None
    spec, sandbox = make_job(
        tmp_path, "echo gone; echo kept >&2\n", out="/dev/null", err="/submit/dir/job.err"
    )
    assert run(spec, sandbox) == 0
    assert outputs_to_upload(spec, str(sandbox), {}) == ["job.err", "job.sh"]


@pytest.mark.parametrize(
    ("script", "code"), [("exit 3\n", 3), ("kill -KILL $$\n", 137), ("kill -TERM $$\n", 143)]
)
def test_exit_code_follows_the_shell_convention(tmp_path: Path, script: str, code: int) -> None:
    spec, sandbox = make_job(tmp_path, script)
    assert run(spec, sandbox) == code


def test_kill_terminates_the_group_and_escalates_to_sigkill(tmp_path: Path) -> None:
    # The job ignores SIGTERM (as does its child), so only the SIGKILL after the grace ends it.
    spec, sandbox = make_job(tmp_path, "trap '' TERM\nsleep 600 &\necho ready > ready\nwait\n")
    os.mkfifo(sandbox / "ready")
    process = JobProcess(spec, str(sandbox), job_environment(spec, str(sandbox), {}))
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(process.run()))
    thread.start()
    ready = threading.Event()  # the fifo read returns once the job is past its trap
    threading.Thread(
        target=lambda: ((sandbox / "ready").read_text(), ready.set()), daemon=True
    ).start()
    assert ready.wait(WAIT)
    process.kill(grace=0.2)
    thread.join(WAIT)
    assert result == [128 + signal.SIGKILL]


def test_an_unrunnable_command_exits_127_with_the_reason_in_stderr(tmp_path: Path) -> None:
    spec, sandbox = make_job(tmp_path, "", err="job.err")
    spec.cmd = "/nonexistent/program"
    assert run(spec, sandbox) == 127
    assert "cannot execute /nonexistent/program" in (sandbox / "job.err").read_text()


def test_an_executable_busy_for_writing_is_waited_for_not_failed(tmp_path: Path) -> None:
    # Another thread's fork can hold a write descriptor of the executable for an
    # instant (ETXTBSY); here the test holds one until the agent has hit it once.
    spec, sandbox = make_job(tmp_path, "echo ran\n", out="job.out")
    busy = threading.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "text file busy" in record.getMessage():
                busy.set()

    handler = Seen()
    jobs_log = logging.getLogger("glidewms.glidein.agent.jobs")
    jobs_log.addHandler(handler)
    jobs_log.setLevel(logging.INFO)
    writer = open(sandbox / "job.sh", "ab")  # noqa: SIM115 (closed below, mid-run)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run(spec, sandbox)))
    try:
        thread.start()
        assert busy.wait(WAIT), "the agent never met the busy executable"
    finally:
        writer.close()
        jobs_log.removeHandler(handler)
    thread.join(WAIT)
    assert result == [0]
    assert (sandbox / "job.out").read_text() == "ran\n"


def test_job_environment_is_clean_and_pilot_variables_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLIDEIN_TOKEN_FILE", "/secret/token")
    monkeypatch.setenv("https_proxy", "http://squid:3128")
    spec = JobSpec.from_claim(
        {"cmd": "/bin/true", "env": {"A": 1, "_CONDOR_SCRATCH_DIR": "/x"}, "request": {"cpus": 4}}
    )
    env = job_environment(spec, "/sb", {"GLIDEIN_Site": "S"})
    assert "GLIDEIN_TOKEN_FILE" not in env
    assert env["HOME"] == env["TMPDIR"] == env["_CONDOR_SCRATCH_DIR"] == "/sb"
    assert (env["A"], env["GLIDEIN_Site"], env["OMP_NUM_THREADS"]) == ("1", "S", "4")
    assert env["https_proxy"] == "http://squid:3128"


@pytest.mark.parametrize(
    "job",
    [
        {"cmd": "x", "sandbox": [{"name": "../evil", "sha256": "0" * 64}]},
        {"cmd": "x", "sandbox": [{"name": "a/../../b", "sha256": "0" * 64}]},
        {"cmd": "x", "sandbox": [{"name": "/etc/passwd", "sha256": "0" * 64}]},
        {"cmd": "x", "sandbox": [{"name": "a//b", "sha256": "0" * 64}]},
        {"cmd": "x", "sandbox": [{"name": "a/./b", "sha256": "0" * 64}]},
        {"cmd": "x", "sandbox": [{"name": "a/", "sha256": "0" * 64}]},
        {"cmd": "x", "sandbox": [{"name": "/".join("d" * 40), "sha256": "0" * 64}]},
        {"cmd": "x", "x509_proxy": "/"},
        {"cmd": "x", "input_urls": ["http://h/f"] * 1001},
        {"cmd": "x", "sandbox": [{"name": "a", "sha256": "not-a-hash"}]},
        {"cmd": "x", "out": ".."},
        {"args": []},
        "not a dict",
    ],
)
def test_malformed_or_unsafe_jobs_are_refused(job: Any) -> None:
    with pytest.raises(JobSetupError):
        JobSpec.from_claim(job)


def test_sandbox_names_are_flat() -> None:
    assert [sandbox_name(j) for j in ("12.0", "a/b.c", "")] == ["12_0", "a_b_c", "job"]


# --------------------------------------------------------------------------- claims


def test_sandbox_file_with_the_wrong_hash_is_refused(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    claim = claim_for(pool, "c1", {"job.sh": b"#!/bin/sh\ntouch ran\n"})
    pool.files[claim["job"]["sandbox"][0]["sha256"]] = b"#!/bin/sh\nrm -rf ~\n"
    api = Api(pool.url, str(token_file), backoff=0.01)
    runner = ClaimRunner(
        claim, JobSpec.from_claim(claim["job"]), api, work_dir=str(tmp_path), job_env={}
    )
    outcome = runner.run()
    assert outcome.setup_failed and not outcome.started and outcome.failed
    assert outcome.result is None  # left to the lease: the pool requeues it
    assert not Path(runner.sandbox).exists()


def test_a_runner_uploads_the_outputs_and_hands_the_result_back(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    """The runner does not report to the pool: its result rides the pilot's next turn."""
    claim = claim_for(pool, "c1", {"job.sh": b"#!/bin/sh\necho hi\n"}, out="job.out")
    api = Api(pool.url, str(token_file), backoff=0.01)
    outcome = ClaimRunner(
        claim, JobSpec.from_claim(claim["job"]), api, work_dir=str(tmp_path), job_env={}
    ).run()
    assert outcome.started and outcome.exit_code == 0 and outcome.result is not None
    assert (outcome.result["claim_id"], outcome.result["exit_code"]) == ("c1", 0)
    (output,) = outcome.result["outputs"]
    assert output["name"] == "job.out" and pool.files[output["sha256"]] == b"hi\n"
    assert pool.completed == {} and pool.cycles == []


def test_a_result_the_pool_no_longer_holds_is_dropped(
    pool: FakePool, tmp_path: Path, token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pool.accepts_results = False
    pool.claims.append(claim_for(pool, "c1", {"job.sh": b"#!/bin/sh\nsleep 0.2\n"}))
    thread, box = agent_in_thread(
        config_text(pool, tmp_path / "work", token_file), tmp_path / "work"
    )
    thread.join(WAIT)
    assert not thread.is_alive() and box["rc"] == 0
    assert "c1" in pool.completed  # delivered, and answered "not held"
    assert "claim c1: the pool no longer holds it; result dropped" in caplog.text
    report = pool.reports[0]
    assert report["jobs_run"] == 1 and report["goodput_seconds"] == 0
    assert report["badput_seconds"] >= 0.2


# --------------------------------------------------------------------------- http


def test_api_reads_the_token_per_request_and_never_follows_redirects(
    pool: FakePool, token_file: Path
) -> None:
    api = Api(pool.url, str(token_file), backoff=0.01)
    assert api.call("POST", "pilots", {"slot": {}})[1]["pilot_id"] == "p1"
    token_file.write_text("rotated-token\n")
    with pytest.raises(HttpStatusError) as refused:
        api.call("POST", "pilots", {"slot": {}})
    assert refused.value.status == 401 and TOKEN not in str(refused.value)
    # renewed the factory's way (a new file renamed over the old one), same size
    renewed = token_file.with_name("token.new")
    renewed.write_text(TOKEN + "\n")
    os.replace(renewed, token_file)
    assert api.call("POST", "pilots", {"slot": {}})[1]["pilot_id"] == "p1"

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"{pool.url}/api/v1/files/{'0' * 64}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        other = Api(f"http://127.0.0.1:{server.server_address[1]}", str(token_file))
        with pytest.raises(HttpStatusError) as redirected:
            other.call("GET", "anything", tries=1)
        assert redirected.value.status == 302
        assert pool.unauthorized == 1  # only the rotated-token call reached the pool
    finally:
        server.shutdown()
        server.server_close()


class _Counting(BaseHTTPRequestHandler):
    """HTTP/1.1 server that answers {} and records which connection (client
    port) carried each request; ``finished`` is set when it closes one."""

    protocol_version = "HTTP/1.1"
    ports: list[int]
    finished: threading.Event

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).ports.append(self.client_address[1])
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def finish(self) -> None:
        super().finish()
        type(self).finished.set()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def counting() -> Iterator[tuple[ThreadingHTTPServer, type[_Counting]]]:
    handler = type("Handler", (_Counting,), {"ports": [], "finished": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, handler
    server.shutdown()
    server.server_close()


def test_api_keeps_one_connection_per_thread(
    counting: tuple[ThreadingHTTPServer, type[_Counting]], token_file: Path
) -> None:
    """A pilot's claim loop reuses its connection (keep-alive, no handshake per
    turn); another thread (the completion sender) has its own."""
    server, handler = counting
    api = Api(f"http://127.0.0.1:{server.server_address[1]}", str(token_file))
    for _ in range(3):
        assert api.call("POST", "pilots/p1/cycle", {}) == (200, {})
    other = threading.Thread(target=api.call, args=("POST", "pilots/p1/cycle", {}))
    other.start()
    other.join(30)
    assert len(handler.ports) == 4
    assert len(set(handler.ports[:3])) == 1  # one connection for the three calls
    assert handler.ports[3] != handler.ports[0]


def test_api_resends_on_a_fresh_connection_when_the_kept_one_was_closed(
    counting: tuple[ThreadingHTTPServer, type[_Counting]], token_file: Path
) -> None:
    """Servers close idle kept connections (uvicorn after 5 s); a request that
    meets such a close is sent again on a new connection, not failed."""
    server, handler = counting
    handler.timeout = 0.2  # the server drops a connection idle this long
    api = Api(f"http://127.0.0.1:{server.server_address[1]}", str(token_file))
    assert api.call("POST", "pilots/p1/cycle", {}, tries=1) == (200, {})
    assert handler.finished.wait(30)  # the server closed our kept connection
    assert api.call("POST", "pilots/p1/cycle", {}, tries=1) == (200, {})
    assert len(handler.ports) == 2 and handler.ports[0] != handler.ports[1]


# --------------------------------------------------------------------------- whole pilot


JOB_SH = b"""#!/bin/sh
echo "hello from $GLIDEIN_Site"
echo "to stderr" >&2
cat input.txt > result.txt
echo "computed" >> result.txt
env > env.txt
"""


def python39() -> str | None:
    """A working python3.9 (the oldest the nodes may have): on PATH or under pyenv."""
    candidates = [
        shutil.which("python3.9"),
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9"))),
    ]
    for candidate in filter(None, candidates):
        check = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        if check.returncode == 0 and check.stdout.strip() == "(3, 9)":
            return candidate
    return None


def interpreters() -> list[Any]:
    """The running python, and python3.9 when this machine has one."""
    old = python39()
    skip = pytest.mark.skipif(old is None, reason="no python3.9 on this machine")
    return [sys.executable, pytest.param(old or "python3.9", marks=skip, id="python3.9")]


@pytest.mark.parametrize("python", interpreters())
def test_pilot_runs_a_job_and_retires_after_idle_timeout(
    pool: FakePool, tmp_path: Path, token_file: Path, python: str
) -> None:
    """The agent as shipped: a directory named `agent`, run with `python3 -m agent`."""
    work = tmp_path / "work"
    shutil.copytree(AGENT_DIR, work / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "glidein_config").write_text(config_text(pool, work, token_file))
    pool.claims.append(
        claim_for(
            pool,
            "c1",
            {"job.sh": JOB_SH, "input.txt": b"input\n"},
            out="/submit/job.out",
            err="/submit/job.err",
        )
    )
    env = {"PATH": os.environ["PATH"], "GLIDEIN_TOKEN_FILE": str(token_file)}
    proc = subprocess.run(
        [python, "-m", "agent", "--config", "glidein_config"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert proc.returncode == 0, proc.stderr
    slot = pool.registered[0]["slot"]
    assert (slot["Cpus"], slot["Memory"], slot["HAS_TEST"], slot["Speed"]) == (2, 1024, True, 2.5)
    assert pool.claim_requests[0]["free"]["cpus"] == 2
    assert 0 < pool.claim_requests[0]["wait"] <= 2  # never past the idle timeout
    done = pool.completed["c1"]
    assert done["exit_code"] == 0 and done["wall_seconds"] >= 0
    outputs = {o["name"]: pool.files[o["sha256"]] for o in done["outputs"]}
    assert sorted(outputs) == ["env.txt", "job.err", "job.out", "result.txt"]
    assert outputs["job.out"] == b"hello from TEST_SITE\n"
    assert outputs["result.txt"] == b"input\ncomputed\n"
    job_env = outputs["env.txt"].decode()
    assert "GLIDEIN_TOKEN_FILE" not in job_env and TOKEN not in job_env
    assert f"_CONDOR_SCRATCH_DIR={work}/execute/c1_0" in job_env
    assert pool.deregistered == [{"reason": "idle_timeout"}]
    (report,) = pool.reports
    assert report["exit_reason"] == "idle_timeout" and report["exit_code"] == 0
    assert (report["jobs_run"], report["jobs_failed"], report["cpus"]) == (1, 0, 2)
    assert pool.unauthorized == 0
    assert TOKEN not in proc.stderr and "exiting: idle_timeout" in proc.stderr
    assert list((work / "execute").iterdir()) == []


def test_free_cores_are_claimed_in_one_call_and_each_claim_runs(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    """With 2 free cores the agent asks for max_jobs 2 and runs every claim of the answer."""
    pool.claims += [
        claim_for(pool, c, {"job.sh": JOB_SH, "input.txt": b"input\n"}) for c in ("c1", "c2")
    ]
    thread, box = agent_in_thread(
        config_text(pool, tmp_path / "work", token_file), tmp_path / "work"
    )
    thread.join(WAIT)
    assert not thread.is_alive() and box["rc"] == 0
    assert pool.claim_requests[0]["max_jobs"] == 2
    assert sorted(pool.completed) == ["c1", "c2"]
    assert all(done["exit_code"] == 0 for done in pool.completed.values())
    assert pool.reports[0]["jobs_run"] == 2


def test_results_ride_with_the_next_claim_call(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    """HTCondor-style claim reuse: a job's result is not a call of its own but
    part of the call that asks for the next job (one round trip per turn)."""
    pool.claims += [
        claim_for(pool, c, {"job.sh": JOB_SH, "input.txt": b"input\n"}) for c in ("c1", "c2", "c3")
    ]
    thread, box = agent_in_thread(
        config_text(pool, tmp_path / "work", token_file), tmp_path / "work"
    )
    thread.join(WAIT)
    assert not thread.is_alive() and box["rc"] == 0
    assert sorted(pool.completed) == ["c1", "c2", "c3"]
    assert pool.cycles[0]["completions"] == [] and pool.cycles[0]["max_jobs"] == 2
    riding = [b for b in pool.cycles if b["completions"] and b["max_jobs"] > 0]
    assert riding, pool.cycles  # at least one result went with a request for work
    assert riding[0]["completions"][0]["claim_id"] in ("c1", "c2")
    assert pool.reports[0]["jobs_run"] == 3


def test_a_result_is_sent_alone_while_the_claim_call_long_polls(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    """The claim loop blocks in a long-poll (nothing more to run); the ended
    job's result must not wait for it: the completion thread sends it alone."""
    pool.claims.append(claim_for(pool, "c1", {"job.sh": JOB_SH, "input.txt": b"input\n"}))
    thread, box = agent_in_thread(
        config_text(pool, tmp_path / "work", token_file, GLIDEIN_Idle_Timeout=3), tmp_path / "work"
    )
    assert pool.events["complete"].wait(WAIT)
    alone = [b for b in pool.cycles if b["max_jobs"] == 0]
    assert [d["claim_id"] for b in alone for d in b["completions"]] == ["c1"]
    assert len(pool.claim_requests) == 2  # the one that got c1, and the long-poll
    thread.join(WAIT)
    assert not thread.is_alive() and box["rc"] == 0
    assert pool.reports[0]["goodput_seconds"] >= 0 and pool.reports[0]["jobs_run"] == 1


def test_completion_queue_retries_undelivered_results_first() -> None:
    queue = CompletionQueue()
    assert queue.age(10.0) is None and queue.claim_ids() == []
    for n, at in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        queue.add({"claim_id": n}, at)
    assert queue.age(4.0) == 3.0
    batch = queue.take(2)
    assert [b["claim_id"] for b in batch] == ["a", "b"]
    assert sorted(queue.claim_ids()) == ["a", "b", "c"]  # in flight: still renewed
    queue.settle(batch, delivered=False, now=5.0)
    assert [b["claim_id"] for b in queue.take(5)] == ["a", "b", "c"]
    assert queue.age(6.0) is None
    queue.settle([{"claim_id": "a"}, {"claim_id": "b"}, {"claim_id": "c"}], True, 6.0)
    assert queue.claim_ids() == [] and len(queue) == 0


def test_completion_queue_holds_results_back_until_due_or_frozen() -> None:
    queue = CompletionQueue()
    queue.add({"claim_id": "ok"}, 1.0, cores=4)
    queue.add({"claim_id": "quick"}, 1.0, cores=2, hold=10.0)
    assert [b["claim_id"] for b in queue.take(5)] == ["ok"]  # held: not in a turn
    assert sorted(queue.claim_ids()) == ["ok", "quick"]  # but its lease is renewed
    assert queue.next_due(5.0) == 6.0 and queue.age(5.0) is None
    assert queue.age(11.0) == 0.0  # due: pending now
    assert [b["claim_id"] for b in queue.take(5)] == ["quick"]
    assert (queue.cores("ok"), queue.cores("quick"), queue.cores("unknown")) == (4, 2, 1)
    queue.add({"claim_id": "v1"}, 20.0, hold=10.0)
    queue.freeze()  # a black hole: held results never come due
    queue.add({"claim_id": "v2"}, 21.0, hold=10.0)
    assert queue.age(100.0) is None and queue.next_due(100.0) is None
    assert [r["claim_id"] for r in queue.take_held()] == ["v1", "v2"]
    assert queue.held() == 0
    queue.add({"claim_id": "v3"}, 30.0, hold=10.0)
    assert queue.release(30.0, everything=True) == 1  # at exit, whatever happens
    assert [b["claim_id"] for b in queue.take(5)] == ["v3"]


def test_sigterm_kills_the_running_job_deregisters_and_reports(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "glidein_config").write_text(config_text(pool, work, token_file))
    pool.claims.append(sleeping_python_claim(pool, "c1"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "glidewms.glidein.agent", "--config", "glidein_config"],
        cwd=work,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert pool.events["started"].wait(WAIT), "the job never started"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert pool.completed == {}
    assert pool.deregistered == [{"reason": "signal"}]
    assert pool.reports[0]["exit_reason"] == "signal"
    assert pool.reports[0]["detail"] == "got SIGTERM"
    assert not Path(f"/proc/{pool.started_jobs[0]['pid']}").exists()


def test_heartbeat_kill_stops_the_job_without_completing_it(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    pool.claims.append(sleeping_python_claim(pool, "c1"))
    pool.kill_when_started.add("c1")
    thread, box = agent_in_thread(
        config_text(pool, tmp_path / "w", token_file, GLIDEIN_Idle_Timeout=1), tmp_path / "w"
    )
    thread.join(WAIT)
    assert not thread.is_alive()
    assert box["rc"] == 0 and pool.completed == {}
    assert any("c1" in hb["claims"] for hb in pool.heartbeats)
    report = pool.reports[0]
    assert (report["exit_reason"], report["jobs_run"], report["jobs_failed"]) == (
        "idle_timeout",
        1,
        0,
    )


def test_an_idle_pilot_in_a_long_poll_sends_no_heartbeat_to_a_pool_that_renews(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    """The pool keeps a long-polling pilot alive: with nothing running and
    nothing to report, heartbeats (1 s period here) would renew nothing."""
    pool.turns_renew = True
    thread, box = agent_in_thread(
        config_text(pool, tmp_path / "w", token_file, GLIDEIN_Idle_Timeout=3), tmp_path / "w"
    )
    thread.join(WAIT)
    assert not thread.is_alive()
    assert pool.reports[0]["exit_reason"] == "idle_timeout"
    assert pool.cycles and all(c["claims"] == [] for c in pool.cycles)
    assert pool.heartbeats == []
    assert box["agent"].exchange.heartbeats == 0


def test_kill_reaches_a_busy_pilot_through_its_cycle_answer(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    """A pilot with a free core turns, listing its running claim; the turn's
    answer (not a heartbeat: the fake never says kill there) kills the job."""
    pool.turns_renew = True
    pool.claims.append(sleeping_python_claim(pool, "c1"))
    pool.kill_when_started.add("c1")
    thread, box = agent_in_thread(
        config_text(pool, tmp_path / "w", token_file, GLIDEIN_Idle_Timeout=1), tmp_path / "w"
    )
    thread.join(WAIT)
    assert not thread.is_alive()
    assert box["rc"] == 0 and pool.completed == {}
    assert any("c1" in (c.get("claims") or []) for c in pool.cycles)
    assert pool.reports[0]["jobs_run"] == 1


def test_a_pool_that_forgot_the_pilot_means_lost(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    pool.gone = True
    pool.claims.append(sleeping_python_claim(pool, "c1"))
    thread, box = agent_in_thread(
        config_text(pool, tmp_path / "w", token_file, GLIDEIN_Idle_Timeout=600), tmp_path / "w"
    )
    thread.join(WAIT)
    assert not thread.is_alive()
    assert box["rc"] == 3
    assert pool.reports[0]["exit_reason"] == "lost"
    assert pool.deregistered == [] and pool.completed == {}


def test_registration_refused_reports_error(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    pool.register_status = 403
    thread, box = agent_in_thread(config_text(pool, tmp_path / "w", token_file), tmp_path / "w")
    thread.join(WAIT)
    assert box["rc"] == 1
    assert pool.reports[0]["exit_reason"] == "error"
    assert "403" in pool.reports[0]["detail"] and pool.deregistered == []


def test_shipped_pilot_code_parses_as_python_39() -> None:
    """Worker nodes may only have Python 3.9; this check runs on every machine,
    also where no python3.9 exists to run the agent for real."""
    import ast

    for path in sorted(AGENT_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path), feature_version=(3, 9))
        future = [
            n
            for n in tree.body
            if isinstance(n, ast.ImportFrom)
            and n.module == "__future__"
            and any(a.name == "annotations" for a in n.names)
        ]
        assert future or path.name == "__init__.py", f"{path.name}: needs postponed annotations"
