"""Crashes and exhaustion from input (issue 11), replayed against a real pool.

`glidewms pool` runs as a child process (as in tests/integration/
test_pool_durability.py): a probe that kills it shows as a dead process, not
as a failed assertion inside pytest. Each probe is what an attacker sent,
and each test asserts the refusal (422/413 naming what was refused) and that
the pool still serves afterwards, across a restart too (nothing that could
crash it was stored).
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
import sqlalchemy as sa

from glidewms.db import make_engine, sqlite_url
from glidewms.pool.jobs import NewJob
from glidewms.pool.store import PoolStore
from glidewms.security.tokens import TokenIssuer
from tests.integration.test_pool_durability import PoolProcess

DEEP = "+".join(["1"] * 40_000)  # ~40k terms: parses, then SIGSEGV in classad2 when printed
JOB = '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 10; Requirements = {req} ]'
SLOT = {"Cpus": 2, "Memory": 1000, "Disk": 100000}
FREE = {"cpus": 2, "memory": 1000, "disk": 100000}


class Pool:
    """A running pool process and the callers the probes use."""

    def __init__(self, process: PoolProcess) -> None:
        self.process = process
        issuer = TokenIssuer.from_file(process.keys[0])
        self.alice = {"Authorization": f"Bearer {issuer.issue('alice', ['user'])}"}
        self.pilot = {
            "Authorization": f"Bearer {issuer.issue('p', ['pilot'], fe='fe1', group='main')}"
        }
        self.http = httpx.Client(timeout=120)

    def call(self, method: str, path: str, who: dict[str, str], **kw: Any) -> httpx.Response:
        return self.http.request(method, f"{self.process.url}/api/v1/{path}", headers=who, **kw)

    def raw_json(self, path: str, who: dict[str, str], text: str) -> httpx.Response:
        """A body as written (NaN and Infinity are not JSON; Python reads them)."""
        headers = {**who, "Content-Type": "application/json"}
        return self.http.post(f"{self.process.url}/api/v1/{path}", headers=headers, content=text)

    def raw(
        self, request_line: str, who: dict[str, str], length: int = 0, body: bytes = b""
    ) -> str:
        """The status line of a request written by hand (what clients refuse to send)."""
        url = urlsplit(self.process.url)
        head = (
            f"{request_line} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: {who['Authorization']}\r\nContent-Length: {length}\r\n\r\n"
        )
        with socket.create_connection((url.hostname, url.port), timeout=60) as conn:
            conn.sendall(head.encode() + body)
            return conn.recv(4096).decode(errors="replace").split("\r\n")[0]

    def assert_serving(self) -> None:
        """Alive, answering, and still doing its work: a job goes to a pilot."""
        assert self.process.proc is not None and self.process.proc.poll() is None, (
            "the pool died: " + (self.process.dir / "pool.log").read_text()[-3000:]
        )
        assert self.http.get(f"{self.process.url}/healthz").status_code == 200
        r = self.call("POST", "jobs", self.alice, json={"jobs": [{"ad": JOB.format(req="true")}]})
        assert r.status_code == 201, r.text
        assert self.call("GET", "jobs", self.alice).status_code == 200


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    process = PoolProcess(tmp_path_factory.mktemp("pool"), None)
    process.start()
    try:
        yield Pool(process)
    finally:
        process.stop()


def refused(r: httpx.Response, status: int, *names: str) -> None:
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    for name in names:
        assert name in str(detail), detail


def test_deep_expressions_are_refused_and_the_pool_keeps_serving(pool: Pool) -> None:
    """In a submit's Requirements, a constraint of list/act/edit, a qedit
    value and a pilot's slot attribute: before the library sees any."""
    refused(
        pool.call("POST", "jobs", pool.alice, json={"jobs": [{"ad": JOB.format(req=DEEP)}]}),
        422,
        "jobs[0]",
        "Requirements",
    )
    pool.assert_serving()
    for action in ("remove", "hold", "release"):
        refused(
            pool.call("POST", f"jobs/{action}", pool.alice, json={"constraint": DEEP}),
            422,
            "constraint",
        )
    refused(
        pool.call(
            "POST",
            "jobs/edit",
            pool.alice,
            json={"constraint": DEEP, "attribute": "A", "value": "1"},
        ),
        422,
        "constraint",
    )
    refused(
        pool.call(
            "POST",
            "jobs/edit",
            pool.alice,
            json={"constraint": "true", "attribute": "Requirements", "value": DEEP},
        ),
        422,
        "Requirements",
    )
    deep_enough = "+".join(["1"] * 4000)  # fits a URL; 4x the operator bound
    refused(
        pool.call("GET", "jobs", pool.alice, params={"constraint": deep_enough}), 422, "constraint"
    )
    # too long for httpx to send: written by hand; refused by the HTTP server or by us
    status = pool.raw(f"GET /api/v1/jobs?constraint={quote(DEEP)}", pool.alice)
    assert status.startswith("HTTP/1.1 4"), status
    pool.assert_serving()
    refused(
        pool.call("POST", "pilots", pool.pilot, json={"slot": {**SLOT, "GLIDEIN_Start": DEEP}}),
        422,
        "GLIDEIN_Start",
    )
    nested: list[Any] = []
    for _ in range(200):
        nested = [nested]
    refused(
        pool.call("POST", "pilots", pool.pilot, json={"slot": {**SLOT, "Deep": nested}}),
        422,
        "Deep",
    )
    pool.assert_serving()
    # nothing of it was stored: a restarted pool serves, and matches
    pool.process.stop()
    pool.process.start()
    pool.assert_serving()
    r = pool.call("POST", "pilots", pool.pilot, json={"slot": SLOT, "glidein_id": "g"})
    assert r.status_code == 201, r.text
    claim = pool.call(
        "POST", f"pilots/{r.json()['pilot_id']}/claim", pool.pilot, json={"free": FREE}
    )
    assert claim.status_code == 200, claim.text


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("RequestCpus", "-100"),
        ("RequestMemory", "1e30"),
        ("RequestDisk", "-1"),
        ("RequestGPUs", 'real("INF")'),
        ("RequestCpus", 'real("NaN")'),
        ("JobPrio", str(2**70)),  # the library would read it as 0
        ("JobPrio", "1e400"),  # ... and this as infinity
        ("MaxRetries", "-3"),
    ],
)
def test_numbers_out_of_range_in_a_job_are_refused(pool: Pool, attribute: str, value: str) -> None:
    ad = f'[ Cmd = "/bin/true"; {attribute} = {value}; Requirements = true ]'
    refused(pool.call("POST", "jobs", pool.alice, json={"jobs": [{"ad": ad}]}), 422, attribute)
    pool.assert_serving()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("claim", '{"free": {"cpus": NaN, "memory": 1000}}'),
        ("claim", '{"free": {"cpus": 1e30}}'),
        ("claim", '{"free": {"cpus": -4}}'),
        ("claim", '{"wait": Infinity}'),
        ("cycle", '{"free": {"memory": Infinity}}'),
        ("cycle", '{"completions": [{"claim_id": "x", "exit_code": 1180591620717411303424}]}'),
        ("cycle", '{"completions": [{"claim_id": "x", "exit_code": 0, "wall_seconds": NaN}]}'),
    ],
)
def test_numbers_out_of_range_from_a_pilot_are_refused(pool: Pool, path: str, body: str) -> None:
    r = pool.call("POST", "pilots", pool.pilot, json={"slot": SLOT, "glidein_id": "g"})
    pilot_id = r.json()["pilot_id"]
    assert pool.raw_json(f"pilots/{pilot_id}/{path}", pool.pilot, body).status_code == 422
    pool.assert_serving()


def test_ids_and_slot_resources_out_of_range_are_refused(pool: Pool) -> None:
    refused(pool.call("GET", f"jobs/{2**70}.0", pool.alice), 422, "not a job id")
    refused(pool.call("GET", "jobs/1.99999999999", pool.alice), 422, "not a job id")
    refused(pool.call("POST", "jobs/hold", pool.alice, json={"job_ids": ["1e30"]}), 422)
    for bad in (1e30, -2, "many"):
        refused(
            pool.call("POST", "pilots", pool.pilot, json={"slot": {**SLOT, "Cpus": bad}}),
            422,
            "Cpus",
        )
    refused(pool.call("POST", "pilots", pool.pilot, json={"slot": {**SLOT, "Big": 2**70}}), 422)
    pool.assert_serving()


@pytest.mark.parametrize("name", ["ExitCode", "HoldReason", "RemoteUser", "JobStatus", "Owner"])
def test_attributes_the_pool_owns_are_refused_at_submit(pool: Pool, name: str) -> None:
    ad = f'[ Cmd = "/bin/true"; {name} = 0; Requirements = true ]'
    refused(pool.call("POST", "jobs", pool.alice, json={"jobs": [{"ad": ad}]}), 422, name)
    # ProcId alone is taken (clients number their jobs) and replaced
    ad = '[ Cmd = "/bin/true"; ProcId = 7; Requirements = true ]'
    r = pool.call("POST", "jobs", pool.alice, json={"jobs": [{"ad": ad}]})
    assert r.status_code == 201 and r.json()["job_ids"][0].endswith(".0")


@pytest.mark.parametrize("name", [".", "..", "", "a/b", "/etc/passwd", "a\x00b", "a\nb"])
def test_sandbox_file_names_must_be_plain(pool: Pool, name: str) -> None:
    data = b"input"
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    assert pool.call("PUT", f"files/{digest}", pool.alice, content=data).status_code in (200, 201)
    job = {
        "ad": JOB.format(req="true"),
        "sandbox": [{"name": name, "sha256": digest}],
    }
    refused(pool.call("POST", "jobs", pool.alice, json={"jobs": [job]}), 422, "name")


@pytest.mark.parametrize("token", ["", "Bearer not-a-token"])
@pytest.mark.parametrize("path", [f"files/{'0' * 64}", "jobs", "pilots/x/cycle"])
def test_a_body_without_a_valid_token_is_refused_before_it_is_read(
    pool: Pool, path: str, token: str
) -> None:
    """A 200 MB unauthenticated POST took 8-15 s to get its 401: now at once,
    with only a few of its bytes sent."""
    method = "PUT" if path.startswith("files") else "POST"
    answer = pool.raw(
        f"{method} /api/v1/{path}", {"Authorization": token}, length=200 << 20, body=b"abc"
    )
    assert answer.startswith("HTTP/1.1 401"), answer[:200]
    pool.assert_serving()


def test_a_200_mb_attribute_is_refused_and_listings_stay_small(pool: Pool) -> None:
    big = "x" * (200 << 20)
    body = json.dumps({"jobs": [{"ad": f'[ Cmd = "/bin/true"; Note = "{big}" ]'}]})
    del big
    r = pool.http.post(
        f"{pool.process.url}/api/v1/jobs",
        headers={**pool.alice, "Content-Type": "application/json"},
        content=body,
    )
    del body
    refused(r, 422, "bytes")
    pool.assert_serving()
    for history in (False, True):
        listing = pool.call("GET", "jobs", pool.alice, params={"history": history})
        assert len(listing.content) < 1 << 20


@pytest.mark.parametrize("path", [f"files/{'0' * 64}", "jobs"])
def test_a_body_past_its_cap_is_refused_before_it_is_read(pool: Pool, path: str) -> None:
    """Content-Length says 300 MB (past the default caps of uploads, 128 MiB,
    and of other bodies, 256 MiB): 413 at once, though only a few bytes came."""
    method = "PUT" if path.startswith("files") else "POST"
    answer = pool.raw(f"{method} /api/v1/{path}", pool.alice, length=300 << 20, body=b"abc")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    files = pool.process.dir / "pool" / "files"
    assert not [p for p in files.rglob(".upload-*")]
    pool.assert_serving()


def test_the_database_and_its_log_are_private(pool: Pool) -> None:
    """They hold job environments: readable by the pool's account only."""
    pool.assert_serving()  # something written: the -wal and -shm exist
    database = pool.process.dir / "pool" / "pool.sqlite"
    found = [database, database.with_name("pool.sqlite-wal"), database.with_name("pool.sqlite-shm")]
    for path in found:
        assert path.exists(), path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    files = pool.process.dir / "pool" / "files"
    assert stat.S_IMODE(os.stat(files).st_mode) == 0o700


def test_a_negative_request_stored_by_an_older_pool_never_overfills_a_pilot(
    tmp_path: Path,
) -> None:
    """`RequestCpus = -100` once let a 2-core pilot run 13 jobs: each claim
    handed back 100 cores. Submits refuse it now; a job stored before (the
    database edited here to hold one) still counts as asking for one core."""
    url = sqlite_url(tmp_path / "pool.sqlite")
    store = PoolStore(make_engine(url))
    ad = '[ Cmd = "/bin/true"; RequestCpus = 1; Requirements = true ]'
    store.queue.submit("alice", [NewJob(ad, [], [], {})] * 20)
    store.close()
    engine = make_engine(url)
    with engine.begin() as conn:
        for table in ("jobs", "autoclusters"):
            conn.execute(
                sa.text(
                    f"UPDATE {table} SET ad = replace(ad, 'RequestCpus = 1', 'RequestCpus = -100')"
                )
            )
    store = PoolStore(engine)
    try:
        pilot = store.pilots.register(dict(SLOT), "g1", "fe", "main", 3600)
        _, claims, _ = store.turns.cycle(pilot, [], dict(FREE), 60, 64, 0.0)
        assert len(claims) == 2
        assert all(c["job"]["request"]["cpus"] == 1 for c in claims)
    finally:
        store.close()
