"""The frontend loop against real HTTP servers on loopback: robustness,
credentials and restart.

Pools are the real pool app (uvicorn in a thread, real SQLite, real tokens).
Factories are a *stand-in* named as such: a small FastAPI app with the
factory's request contract (entries, group pilot counts, `PUT` of desired
state, frontend-scope tokens verified with the real issuer key) that records
every request it gets, so a test can say exactly what reached which factory
in which cycle. An unreachable factory is a loopback port nobody listens on
(connection refused); a hanging one accepts connections and never answers.

Cycles are driven one at a time (`Frontend.cycle`), each bounded by a
deadline; the clock the frontend sees is a variable where time matters
(token renewal). Nothing waits on a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI, Request, Response
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner

from glidewms.cli.main import app as cli
from glidewms.config.frontend import FrontendConfig
from glidewms.config.pool import PoolConfig
from glidewms.frontend.api import create_app as frontend_app
from glidewms.frontend.service import CycleReport, Frontend
from glidewms.pool.api import create_app as pool_app
from glidewms.protocol import API_MAJOR, API_PREFIX, API_VERSION, VERSION_HEADER
from glidewms.security.http import require
from glidewms.security.tokens import Identity, TokenIssuer, TokenVerifier, generate_keypair
from glidewms.service import bind, url_of

TIMEOUT = 1.0  # the frontend's http_timeout in these tests


# ------------------------------------------------------------------ servers


class ThreadServer:
    """A real uvicorn server on a loopback port, in a thread, stopped at exit."""

    def __init__(self, app: Any) -> None:
        self.sock = bind("127.0.0.1", 0)
        self.url = url_of(self.sock)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError(f"server at {self.url} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()
        assert not self.thread.is_alive(), f"server at {self.url} did not stop"


class HangingServer:
    """Accepts connections and never answers a byte (a stuck service)."""

    def __init__(self) -> None:
        self.sock = bind("127.0.0.1", 0)
        self.url = url_of(self.sock)
        self.sock.settimeout(0.2)
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = self.sock.accept()
                self.held.append(conn)

    def __enter__(self) -> HangingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.held:
            conn.close()
        self.sock.close()


def refused_url() -> str:
    """A loopback port with no listener: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class EntryRequest(BaseModel):
    """The factory's request entry (contract 1), plus the group's pilot settings and
    the entry's own pilot token."""

    model_config = ConfigDict(extra="forbid")
    idle: int = Field(ge=0)
    max_running: int = Field(ge=0)
    remove: str = Field(pattern="^(NO|WAIT|IDLE|ALL)$")
    remove_margin: int = Field(0, ge=0)
    start_expr: str | None = None
    container_image: str | None = None
    pilot_token: str | None = None


class VOStage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern="^https?://")
    manifest_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    manifest_key: str = Field(min_length=1)


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pool_url: str
    pilot_token: str | None = Field(None, min_length=1)
    entries: dict[str, EntryRequest]
    vo_stage: VOStage | None = None


@dataclass
class StandInFactory:
    """Stand-in for the factory (see the module docstring)."""

    name: str
    public_key: Path
    entries: list[Any] = field(default_factory=list)
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # group->entry
    received: list[dict[str, Any]] = field(default_factory=list)
    version: str = API_VERSION  # the protocol version it names in every answer

    def app(self) -> FastAPI:
        app = FastAPI()
        app.state.verifier = TokenVerifier.from_file(self.public_key)
        frontend = Depends(require("frontend"))

        @app.middleware("http")
        async def name_the_version(request: Request, call_next: Any) -> Response:
            response: Response = await call_next(request)
            response.headers[VERSION_HEADER] = self.version
            return response

        @app.get(f"{API_PREFIX}/entries")
        async def entries(who: Identity = frontend) -> list[Any]:
            return self.entries

        @app.get(f"{API_PREFIX}/glideins")
        async def glideins(
            summary: bool = False, group: str = "", who: Identity = frontend
        ) -> dict[str, Any]:
            return {"summary": self.counts.get(group, {})}

        @app.put(f"{API_PREFIX}/requests/{{group}}")
        async def put(group: str, body: RequestBody, who: Identity = frontend) -> dict[str, str]:
            self.received.append(
                {"group": group, "frontend": who.subject, **body.model_dump(exclude_none=True)}
            )
            return {"status": "stored"}

        return app

    def requests_for(self, group: str, since: int = 0) -> list[dict[str, Any]]:
        return [r for r in self.received[since:] if r["group"] == group]


def junk_service(answers: dict[str, Any]) -> FastAPI:
    """Stand-in for a pool or factory that answers 200 with the wrong content."""
    app = FastAPI()

    @app.get("/api/v1/{path}")
    async def anything(path: str) -> Any:
        return answers.get(path, ["junk"])

    return app


def entry_ad(name: str, site: str, cpus: int = 1, memory: int = 2048, **attrs: Any) -> dict:
    return {
        "name": name,
        "site": site,
        "enabled": True,
        "cpus": cpus,
        "memory": memory,
        "disk": 10000,
        "attributes": attrs,
    }


# ------------------------------------------------------------------ fixtures


@dataclass
class Keys:
    private: Path
    public: Path
    issuer: TokenIssuer

    def token(self, subject: str, scope: str) -> str:
        return self.issuer.issue(subject, [scope], 3600)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    private, public = generate_keypair(tmp_path / "keys")
    return Keys(private, public, TokenIssuer.from_file(private))


@contextlib.contextmanager
def real_pool(tmp_path: Path, keys: Keys, name: str) -> Iterator[ThreadServer]:
    pilot_private, pilot_public = generate_keypair(keys.private.parent, "pilot_issuer")
    config = PoolConfig(
        state_dir=tmp_path / name,
        issuer_public_key=keys.public,
        pilot_issuer_public_key=pilot_public,
        pilot_issuer_private_key=pilot_private,
        lease_check_seconds=0.5,
    )
    with ThreadServer(pool_app(config, "")) as server:
        yield server


def submit(pool: ThreadServer, keys: Keys, n: int, ad: str) -> None:
    r = httpx.post(
        f"{pool.url}/api/v1/jobs",
        timeout=10,
        headers={"Authorization": f"Bearer {keys.token('alice', 'user')}"},
        json={"jobs": [{"ad": ad}] * n},
    )
    r.raise_for_status()


ONE_CORE = '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 100; Requirements = true ]'


def run_cycle(frontend: Frontend) -> CycleReport:
    """One cycle, bounded by a deadline far above the frontend's own timeouts."""

    async def go() -> CycleReport:
        async with frontend.client() as http:
            return await asyncio.wait_for(frontend.cycle(http), 20 * TIMEOUT)

    return asyncio.run(go())


def frontend_config(tmp_path: Path, keys: Keys, **data: Any) -> FrontendConfig:
    data.setdefault("state_dir", tmp_path / "frontend")
    return FrontendConfig(
        issuer_public_key=keys.public, http_timeout=TIMEOUT, cycle_seconds=0.1, **data
    )


# ------------------------------------------------------------------ robustness


def test_unreachable_and_hanging_services_and_failing_groups_are_isolated(tmp_path, keys):
    """Two healthy pools and factories keep getting their requests every cycle while
    a factory and a pool refuse connections, another factory and pool hang, others
    answer junk, a pool's autocluster does not parse, one group's match
    expression errors and one entry ad is unreadable; status and explain name
    each failure."""
    fa = StandInFactory("fa", keys.public, [entry_ad("a1", "SA"), entry_ad("a2", "SA2")])
    fb = StandInFactory("fb", keys.public, [entry_ad("b1", "SB", cpus=8, memory=16000)])
    with contextlib.ExitStack() as stack:
        pool_a = stack.enter_context(real_pool(tmp_path, keys, "pool_a"))
        pool_b = stack.enter_context(real_pool(tmp_path, keys, "pool_b"))
        fa_server = stack.enter_context(ThreadServer(fa.app()))
        fb_server = stack.enter_context(ThreadServer(fb.app()))
        hanging = stack.enter_context(HangingServer())
        junk = stack.enter_context(ThreadServer(junk_service({"demand": {"autoclusters": 3}})))
        bad_ad = stack.enter_context(
            ThreadServer(
                junk_service(
                    {
                        "demand": {"autoclusters": [{"ad": "[ Requirements = ]", "idle": 1}]},
                        "pilots": [],
                    }
                )
            )
        )
        config = frontend_config(
            tmp_path,
            keys,
            pools=[
                {"name": "pa", "url": pool_a.url},
                {"name": "pb", "url": pool_b.url},
                {"name": "pdead", "url": refused_url()},
                {"name": "phang", "url": hanging.url},
                {"name": "pjunk", "url": junk.url},
                {"name": "pbadad", "url": bad_ad.url},
            ],
            factories=[
                {"name": "fa", "url": fa_server.url},
                {"name": "fb", "url": fb_server.url},
                {"name": "fdead", "url": refused_url()},
                {"name": "fhang", "url": hanging.url},
                {"name": "fjunk", "url": junk.url},
            ],
            groups=[
                {"name": "g1", "pool": "pa"},
                {"name": "g2", "pool": "pb", "factories": ["fa", "fb"]},
                {"name": "g3", "pool": "pdead"},
                {"name": "g4", "pool": "phang", "factories": ["fa"]},
                {"name": "g5", "pool": "pjunk", "factories": ["fa"]},
                {"name": "g6", "pool": "pbadad", "factories": ["fa"]},
                # a string plus a number: Error at every entry
                {"name": "gbad", "pool": "pa", "match_expr": "TARGET.GLIDEIN_Site + 1 > 0"},
            ],
        )
        submit(pool_a, keys, 6, ONE_CORE)
        submit(pool_b, keys, 4, ONE_CORE)
        frontend = Frontend(config, keys.token("fe1", "frontend"))

        for cycle in range(3):
            if cycle == 2:  # the factory's ad for a2 turns unreadable
                fa.entries[1] = {"name": "a2", "site": "SA2", "attributes": "not a mapping"}
            seen_a, seen_b = len(fa.received), len(fb.received)
            report = run_cycle(frontend)
            for f, seen in ((fa, seen_a), (fb, seen_b)):
                got = sorted(r["group"] for r in f.received[seen:])
                assert got == ["g1", "g2"], f"cycle {cycle}: {f.name} got {got}"
            assert not [
                r
                for f in (fa, fb)
                for r in f.received
                if r["group"] in ("g3", "g4", "g5", "g6", "gbad")
            ]
            errors = "\n".join(report.errors)
            assert "factory fdead query failed: ConnectError" in errors
            assert "factory fhang query failed: ReadTimeout" in errors
            assert "pool pdead query failed: ConnectError" in errors
            assert "pool phang query failed: ReadTimeout" in errors
            assert "pool pjunk: unexpected answer shape" in errors
            assert "factory fjunk: unexpected answer shape" in errors
            assert "group g6: observing demand failed: ClassAdError" in errors
            assert report.groups["g6"]["frozen"].startswith("observing demand failed")
            assert "group gbad: group expression evaluates to Error" in errors
            assert "TARGET.GLIDEIN_Site + 1 > 0" in errors
            g1 = report.groups["g1"]
            assert g1["factories"]["fa"] == "ok" and g1["factories"]["fb"] == "ok"
            assert "ConnectError" in g1["factories"]["fdead"]
            assert "ReadTimeout" in g1["factories"]["fhang"]
            assert report.groups["g3"]["frozen"].startswith("pool pdead query failed")

        # demand reached the healthy entries; the unreadable one kept its last request
        last_a = fa.requests_for("g1")[-1]["entries"]
        assert last_a["a1"]["idle"] >= 1
        assert last_a["a2"] == {**fa.requests_for("g1")[-2]["entries"]["a2"], "remove": "NO"}
        assert fb.requests_for("g2")[-1]["entries"]["b1"]["idle"] >= 1
        assert report.groups["g1"]["failed_entries"]["fa/a2"].startswith("entry ad unreadable")

    # the operator's view: the status API and explain of the same frontend
    app = frontend_app(config, keys.token("fe1", "frontend"), frontend=frontend, loop=False)
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {keys.token('ops', 'admin')}"}
    status = client.get("/api/v1/status", headers=auth).json()
    assert status["cycles"] == 3
    assert any("fhang" in e for e in status["last_cycle"]["errors"])
    assert "frozen" in status["last_cycle"]["groups"]["gbad"]
    [broken] = client.get(
        "/api/v1/explain", params={"entry": "fa/a2", "group": "g1"}, headers=auth
    ).json()
    assert broken["failed"].startswith("entry ad unreadable") and broken["request"]["idle"] >= 0
    # fb/b1 serves two groups, each explained on its own: g2's jobs are in pool b
    b1 = client.get("/api/v1/explain", params={"entry": "b1"}, headers=auth).json()
    assert [(r["group"], r["demand"]["idle_jobs"]) for r in b1] == [("g1", 6), ("g2", 4)]
    [g2] = client.get("/api/v1/explain", params={"entry": "b1", "group": "g2"}, headers=auth).json()
    sent = dict(fb.requests_for("g2")[-1]["entries"]["b1"])
    assert sent.pop("pilot_token") and g2["request"] == sent

    # and through the command line, over HTTP
    token_file = tmp_path / "ops.token"
    token_file.write_text(keys.token("ops", "admin"))
    with ThreadServer(app) as server:
        base = ["frontend", "explain", "--url", server.url, "--token-file", str(token_file)]
        brief = CliRunner().invoke(cli, [*base, "--brief"])
        table = CliRunner().invoke(cli, [*base, "fa/a2"])
    assert brief.exit_code == 0 and table.exit_code == 0, brief.output + table.output
    rows = {tuple(line.split()[:2]): line for line in brief.output.splitlines()[1:]}
    assert rows[("fa/a2", "g1")].endswith("failed: " + broken["failed"])
    assert rows[("fb/b1", "g2")].split()[2:3] == ["2"]  # the cycle
    assert "failed  | entry ad unreadable" in table.output


# ------------------------------------------------------------------ credentials


def test_pilot_tokens_are_renewed_before_expiry_and_delegated_with_every_request(tmp_path, keys):
    """Every request carries a pilot token minted by the real pool for the entry;
    it is reused while more than half its life is left, renewed after, and the
    renewed token is what the factory gets. The frontend's clock is a variable."""
    factory = StandInFactory("f", keys.public, [entry_ad("e", "S")])
    now = [time.time()]
    with real_pool(tmp_path, keys, "pool") as pool, ThreadServer(factory.app()) as fs:
        verifier = TokenVerifier.from_file(keys.public, keys.private.parent / "pilot_issuer.pub")
        config = frontend_config(
            tmp_path,
            keys,
            pool_url=pool.url,
            factory_url=fs.url,
            groups=[
                {"name": "main", "pilot_token_lifetime": 600, "pilot_token_renew_fraction": 0.5}
            ],
        )
        frontend = Frontend(config, keys.token("fe1", "frontend"), clock=lambda: now[0])
        sent: list[str] = []
        for advance in (0, 100, 150, 100, 100):  # t = 0, 100, 250, 350, 450
            now[0] += advance
            run_cycle(frontend)
            [request] = factory.received[len(sent) :]
            assert "pilot_token" not in request  # no group-wide token: entries' own only
            sent.append(request["entries"]["e"]["pilot_token"])

    first, renewed = sent[0], sent[3]
    assert sent[:3] == [first] * 3, "renewed while more than half of its life was left"
    assert renewed != first, "not renewed once less than half of its life was left"
    assert sent[4] == renewed
    claims = [verifier.verify(t) for t in (first, renewed)]
    for identity in claims:
        assert identity.scopes == {"pilot"}
        assert identity.claims["fe"] == "fe1" and identity.claims["group"] == "main"
    assert claims[1].claims["jti"] != claims[0].claims["jti"]
    assert claims[1].claims["exp"] >= claims[0].claims["exp"]


def test_a_factory_of_another_major_version_is_a_failed_source(tmp_path, keys):
    """A factory that names another major protocol version is not read nor sent
    to, like one that does not answer; one of a newer minor version is."""
    factory = StandInFactory("f", keys.public, [entry_ad("e", "S")], version="2.0")
    with real_pool(tmp_path, keys, "pool") as pool, ThreadServer(factory.app()) as fs:
        submit(pool, keys, 2, ONE_CORE)
        config = frontend_config(tmp_path, keys, pool_url=pool.url, factory_url=fs.url)
        frontend = Frontend(config, keys.token("fe1", "frontend"))
        refused = run_cycle(frontend)
        factory.version = f"{API_MAJOR}.99"
        newer = run_cycle(frontend)
    [error] = refused.errors
    assert "factory factory" in error and "'2.0'" in error and API_VERSION in error
    assert refused.groups["main"]["factories"]["factory"] == error
    assert newer.ok and newer.groups["main"]["factories"]["factory"] == "ok"
    assert [r["entries"]["e"]["idle"] for r in factory.received] == [1]


# ------------------------------------------------------------------ restart


def test_removal_stage_and_counters_survive_a_restart(tmp_path, keys):
    """Cycles without demand escalate removal; a new frontend started from the same
    state_dir continues the escalation (and the cycle count) instead of starting over."""
    factory = StandInFactory("f", keys.public, [entry_ad("e", "S")])
    with real_pool(tmp_path, keys, "pool") as pool, ThreadServer(factory.app()) as fs:
        config = frontend_config(
            tmp_path,
            keys,
            pool_url=pool.url,
            factory_url=fs.url,
            groups=[
                {"name": "main", "zero_demand_confirm_cycles": 2, "removal_escalate_cycles": 2}
            ],
        )
        token = keys.token("fe1", "frontend")
        first = Frontend(config, token)
        for _ in range(3):
            run_cycle(first)
        before = [r["entries"]["e"]["remove"] for r in factory.received]
        assert before == ["NO", "WAIT", "WAIT"]
        assert first.explain("e")[0]["removal"]["no_demand_cycles"] == 3
        del first  # the process ends; only state_dir remains

        again = Frontend(config, token)
        assert again.cycles == 3
        run_cycle(again)
        assert factory.received[-1]["entries"]["e"]["remove"] == "IDLE"
        [latest] = again.explain("e")
        assert latest["removal"]["no_demand_cycles"] == 4 and latest["cycle"] == 3

        # the same cycle from an empty state_dir starts over: the check above can fail
        fresh = Frontend(config.model_copy(update={"state_dir": tmp_path / "other"}), token)
        run_cycle(fresh)
        assert factory.received[-1]["entries"]["e"]["remove"] == "NO"


def test_a_failing_factory_is_logged_when_it_fails_and_when_it_recovers_not_every_cycle(
    tmp_path, keys, caplog
):
    factory = StandInFactory("f", keys.public, [entry_ad("e", "S")], version="2.0")
    with real_pool(tmp_path, keys, "pool") as pool, ThreadServer(factory.app()) as fs:
        config = frontend_config(tmp_path, keys, pool_url=pool.url, factory_url=fs.url)
        frontend = Frontend(config, keys.token("fe1", "frontend"))
        caplog.set_level("INFO", logger="glidewms.frontend.faults")
        for _ in range(3):
            assert not run_cycle(frontend).ok
        assert frontend.faults.failing()["factory factory query"]["failed_cycles"] == 3
        factory.version = API_VERSION  # the factory is upgraded back: it answers again
        for _ in range(2):
            run_cycle(frontend)
        said = [r.getMessage() for r in caplog.records if r.name == "glidewms.frontend.faults"]
        assert len(said) == 2, said
        assert said[0].startswith("factory factory query: failing: ") and "2.0" in said[0]
        assert said[1].startswith("factory factory query: works again after 3 failed cycle(s)")
        assert frontend.faults.failing() == {}
        assert factory.received  # the requests flow again


def test_explanations_outlive_a_restart_for_their_retention_time(tmp_path, keys):
    """Records go to state_dir/explain.jsonl: a new frontend from the same state_dir
    explains the cycles of the old one, and forgets those older than
    explain_history_hours."""
    factory = StandInFactory("f", keys.public, [entry_ad("e", "S")])
    now = [1_000_000.0]
    with real_pool(tmp_path, keys, "pool") as pool, ThreadServer(factory.app()) as fs:
        config = frontend_config(
            tmp_path, keys, pool_url=pool.url, factory_url=fs.url, explain_history_hours=1
        )
        token = keys.token("fe1", "frontend")
        first = Frontend(config, token, clock=lambda: now[0])
        for _ in range(3):
            run_cycle(first)
            now[0] += 600
        before = first.explain("e", history=True)
        assert before and sum(r.get("cycles", 1) for r in before) == 3
        del first

        again = Frontend(config, token, clock=lambda: now[0])
        assert again.explain("e", history=True) == before
        now[0] += 2100  # an hour and 300 s after the first cycle: only it is too old
        run_cycle(again)
        kept = again.explain("e", history=True)
        assert all(r["time"] >= now[0] - 3600 for r in kept)
        assert min(r.get("first_cycle", r["cycle"]) for r in kept) == 1  # cycle 0 is forgotten
        assert sum(r.get("cycles", 1) for r in kept) == 3  # cycles 1, 2 and 3
        assert (config.state_dir / "explain.jsonl").is_file()
