"""A small synchronous client of the pool API, for the CLI, the demo and tests.

Where to connect and which token to use come from, in order: explicit
arguments, the environment (`GLIDEWMS_POOL_URL`, `GLIDEWMS_TOKEN_FILE`), and
the `client.json` that `glidewms up` writes in its state directory
(`GLIDEWMS_STATE`, default `./glidewms-state`). The token is read from a file,
never taken from a command-line argument, so it cannot leak through `ps`.
An https pool is verified against the CA bundle found the same way
(`GLIDEWMS_CA_FILE`, client.json's `ca_file`), else the system store.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from glidewms.protocol import API_PREFIX, VERSION_HEADER, IncompatiblePeer, check_peer
from glidewms.security.tls import TlsError, client_context, discover_ca_file

if TYPE_CHECKING:
    from glidewms.submit import SubmitDescription

DEFAULT_STATE = Path("glidewms-state")


class ClientError(Exception):
    """A call failed; the message is what the server or the network said, or
    that the pool speaks another major version of the protocol."""


def error_detail(response: httpx.Response) -> str:
    """What a glidewms service said went wrong: its JSON `detail`, else the body."""
    try:
        return str(response.json().get("detail", response.text))
    except (ValueError, AttributeError):
        return response.text


@dataclass
class ClientSettings:
    pool_url: str
    token_file: Path
    ca_file: Path | None = None  # None: the system store verifies an https pool

    @classmethod
    def discover(
        cls, pool_url: str | None = None, token_file: Path | None = None
    ) -> ClientSettings:
        state = Path(os.environ.get("GLIDEWMS_STATE", DEFAULT_STATE))
        saved: dict[str, Any] = {}
        if (state / "client.json").is_file():
            saved = json.loads((state / "client.json").read_text())
        url = pool_url or os.environ.get("GLIDEWMS_POOL_URL") or saved.get("pool_url")
        token = token_file or os.environ.get("GLIDEWMS_TOKEN_FILE") or saved.get("token_file")
        if not url or not token:
            raise ClientError(
                "no pool to talk to: run `glidewms up` in this directory, or set "
                "GLIDEWMS_POOL_URL and GLIDEWMS_TOKEN_FILE (or pass --pool and --token-file)"
            )
        return cls(url.rstrip("/"), Path(token), discover_ca_file(state))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class StreamPart:
    """What `PoolClient.stream` read: `data` starts at `offset` of the stream;
    the pool keeps `start`..`end`; `state` is the job's."""

    offset: int
    start: int
    end: int
    state: str
    data: bytes


class PoolClient:
    def __init__(self, settings: ClientSettings, timeout: float = 30.0) -> None:
        try:
            token = settings.token_file.read_text().strip()
        except OSError as exc:
            raise ClientError(
                f"cannot read token file {settings.token_file}: {exc.strerror}"
            ) from None
        self.url = settings.pool_url
        try:
            verify = client_context(settings.ca_file)
        except TlsError as exc:
            raise ClientError(str(exc)) from None
        self._http = httpx.Client(
            base_url=f"{self.url}{API_PREFIX}",
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}"},
            verify=verify,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PoolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_version(self, response: httpx.Response) -> None:
        """Checked before the status: a pool of another major version answers
        this prefix with a 404 whose real cause is the version."""
        try:
            check_peer("pool", response.headers.get(VERSION_HEADER))
        except IncompatiblePeer as exc:
            raise ClientError(f"the pool at {self.url} cannot be used: {exc}") from exc

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the pool at {self.url}: {exc}") from None
        self._check_version(r)
        if r.status_code >= 400:
            raise ClientError(f"{method} {path}: {r.status_code}: {error_detail(r)}")
        return (
            r.json()
            if r.content and r.headers.get("content-type", "").startswith("application/json")
            else r
        )

    # ----------------------------------------------------------- jobs

    def upload(self, path: Path) -> str:
        digest = sha256_of(path)
        with open(path, "rb") as f:
            self._call(
                "PUT",
                f"/files/{digest}",
                content=f.read(),
                headers={"Content-Type": "application/octet-stream"},
            )
        return digest

    def submit(self, description: SubmitDescription) -> dict[str, Any]:
        """Upload every sandbox file once, then queue all jobs as one cluster."""
        hashes: dict[Path, str] = {}
        jobs = []
        for job in description.jobs:
            sandbox = []
            files = ([(job.executable, True)] if job.executable else []) + [
                (p, False) for p in job.inputs
            ]
            for path, executable in files:
                if path.is_dir():
                    raise ClientError(
                        f"{description.source}: {path}: directories in "
                        "transfer_input_files are not supported yet"
                    )
                if path not in hashes:
                    hashes[path] = self.upload(path)
                sandbox.append(
                    {"name": path.name, "sha256": hashes[path], "executable": executable}
                )
            jobs.append({"ad": job.ad_text(), "sandbox": sandbox, "args": job.args, "env": job.env})
        return self._call("POST", "/jobs", json={"jobs": jobs})

    def jobs(
        self, constraint: str | None = None, history: bool = False, long: bool = False
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"history": history, "long": long}
        if constraint:
            params["constraint"] = constraint
        return self._call("GET", "/jobs", params=params)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/jobs/{job_id}")

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/jobs/{job_id}/events")

    def act(
        self,
        action: str,
        job_ids: Iterable[str] = (),
        constraint: str | None = None,
        reason: str = "",
    ) -> list[str]:
        body = {"job_ids": list(job_ids), "constraint": constraint, "reason": reason}
        return self._call("POST", f"/jobs/{action}", json=body)["changed"]

    def edit(
        self, attribute: str, value: str, job_ids: Iterable[str] = (), constraint: str | None = None
    ) -> dict[str, Any]:
        """Set one attribute of idle (or held) jobs: {"changed": [...], "skipped": {id: why}}."""
        body = {
            "job_ids": list(job_ids),
            "constraint": constraint,
            "attribute": attribute,
            "value": value,
        }
        return self._call("POST", "/jobs/edit", json=body)

    def stream(
        self, job_id: str, which: str = "out", offset: int | None = None, limit: int | None = None
    ) -> StreamPart:
        """Part of a job's streamed stdout (`which="out"`) or stderr, from
        `offset` (None: the last `limit` bytes); see docs/protocol.md."""
        params: dict[str, Any] = {"which": which}
        if offset is not None:
            params["offset"] = offset
        if limit is not None:
            params["limit"] = limit
        r = self._call("GET", f"/jobs/{job_id}/stream", params=params)
        headers = r.headers
        try:
            return StreamPart(
                offset=int(headers["Glidewms-Stream-Offset"]),
                start=int(headers["Glidewms-Stream-Start"]),
                end=int(headers["Glidewms-Stream-End"]),
                state=str(headers["Glidewms-Job-State"]),
                data=r.content,
            )
        except (KeyError, ValueError):
            raise ClientError(f"GET /jobs/{job_id}/stream: an answer without its headers") from None

    def userprio(self) -> dict[str, Any]:
        """Fair-share state: {"time", "halflife", "submitters": [...]}, best priority first."""
        return self._call("GET", "/userprio")

    def concurrency(self) -> dict[str, Any]:
        """Concurrency limits: {"time", "limits": [{name, limit, in_use, ...}]}."""
        return self._call("GET", "/concurrency")

    def cluster_events(self, cluster_id: int, after: int = 0) -> dict[str, Any]:
        """One page of a cluster's events after event id `after` (pool/eventlog.py)."""
        return self._call("GET", f"/clusters/{cluster_id}/events", params={"after": after})

    def download(self, sha256: str, dest: Path) -> None:
        try:
            with self._http.stream("GET", f"/files/{sha256}") as r:
                self._check_version(r)
                if r.status_code >= 400:
                    raise ClientError(f"GET /files/{sha256}: {r.status_code}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.part")
                digest = hashlib.sha256()
                with open(tmp, "wb") as f:
                    for chunk in r.iter_bytes():
                        digest.update(chunk)
                        f.write(chunk)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot download {sha256}: {exc}") from None
        if digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise ClientError(f"{dest.name}: downloaded content does not match its sha256")
        tmp.replace(dest)

    def fetch_outputs(self, job_id: str, dest: Path) -> list[Path]:
        job = self.job(job_id)
        if job["state"] != "completed":
            raise ClientError(f"job {job_id} is {job['state']}, not completed: no outputs yet")
        written = []
        for out in job["outputs"]:
            name = Path(out["name"]).name
            self.download(out["sha256"], dest / name)
            written.append(dest / name)
        return written
