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
    from glidewms.submit import JobDescription, SubmitDescription

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
        """Upload every sandbox file once, then queue all jobs as one cluster.

        A directory in `transfer_input_files` travels as its files, each under
        its path below the directory (`dir` keeps `dir/` in front, `dir/` does
        not; see `directory_files`)."""
        hashes: dict[Path, str] = {}
        jobs = []
        for job in description.jobs:
            sandbox = self.sandbox_of(job, description.source, hashes)
            jobs.append({"ad": job.ad_text(), "sandbox": sandbox, "args": job.args, "env": job.env})
        return self._call("POST", "/jobs", json={"jobs": jobs})

    def sandbox_of(
        self, job: JobDescription, source: str, hashes: dict[Path, str]
    ) -> list[dict[str, Any]]:
        """The job's sandbox files as the pool takes them, each uploaded once
        (`hashes`: the files uploaded so far)."""
        sandbox = []
        listed, contents = _listed_inputs(job.attrs.get("TransferInput"))
        # preserve_relative_paths: for transfer_input_files only (not stdin, the proxy)
        keep = job.iwd if job.attrs.get("PreserveRelativePaths") == "true" else None
        files = [(job.executable.name, job.executable, True)] if job.executable else []
        for p in job.inputs:  # transfer_input_files entries first, then stdin, the proxy
            under = _under(p, keep) if listed.get(p, 0) > 0 else ""
            listed[p] = listed.get(p, 0) - 1
            files += [
                (under + name, local, False)
                for name, local in directory_files(p, p in contents, source)
            ]
        check_layout([name for name, _, _ in files], source)
        for name, path, executable in files:
            if path not in hashes:
                hashes[path] = self.upload(path)
            sandbox.append({"name": name, "sha256": hashes[path], "executable": executable})
        return sandbox

    PLAIN_MOST = 10_000  # a cluster of more jobs goes in the compact form

    def submit_jobs(
        self, jobs: Iterable[JobDescription], source: str, warnings: list[str] | None = None
    ) -> dict[str, Any]:
        """Queue jobs read one at a time (submit.stream_submit) as one cluster.

        A cluster with max_materialize or max_idle, or of more than
        `PLAIN_MOST` jobs, goes in the compact form (submit/compact.py): its
        first job, then chunks of what each job changes, then a commit; the
        pool materialises its jobs as its limits allow (none: all, a batch at
        a time). Other clusters go in one body, as `submit`. Either way no
        job is queued unless all are: an error while the jobs are read leaves
        the compact cluster uncommitted, invisible, dropped by the pool."""
        from glidewms.submit import SubmitDescription
        from glidewms.submit.compact import limits_of

        stream = iter(jobs)
        first: list[JobDescription] = []
        for job in stream:
            first.append(job)
            if len(first) > self.PLAIN_MOST or limits_of(first[0]) != (None, None):
                return self._submit_compact(first, stream, source)
        return self.submit(SubmitDescription(jobs=first, source=source, warnings=warnings or []))

    def _submit_compact(
        self, head: list[JobDescription], rest: Iterable[JobDescription], source: str
    ) -> dict[str, Any]:
        from itertools import chain

        from glidewms.submit.compact import Chunker, delta, limits_of, wire_job

        hashes: dict[Path, str] = {}
        max_materialize, max_idle = limits_of(head[0])
        proto = wire_job(head[0], self.sandbox_of(head[0], source, hashes))
        created = self._call(
            "POST",
            "/clusters",
            json={"proto": proto, "max_materialize": max_materialize, "max_idle": max_idle},
        )
        cluster_id = int(created["cluster_id"])
        chunker, total = Chunker(), 0
        jobs = chain(head, rest)
        del head  # the jobs read so far go with the chunks, not kept
        for job in jobs:
            d = delta(proto, wire_job(job, self.sandbox_of(job, source, hashes)))
            total += 1
            for start, procs in chunker.add(d):
                self._call(
                    "POST", f"/clusters/{cluster_id}/procs", json={"first": start, "procs": procs}
                )
        for start, procs in chunker.flush():
            self._call(
                "POST", f"/clusters/{cluster_id}/procs", json={"first": start, "procs": procs}
            )
        done = self._call("POST", f"/clusters/{cluster_id}/commit", json={"total": total})
        return {
            "cluster_id": cluster_id,
            "total": total,
            "materialized": done["materialized"],
            "late": True,
        }

    def late_clusters(self, mine: bool = True) -> list[dict[str, Any]]:
        """Late-materialising clusters with jobs queued or to come (GET /clusters);
        none from a pool that does not know them."""
        try:
            return list(self._call("GET", "/clusters", params={"mine": mine}))
        except ClientError as exc:
            if ": 404:" in str(exc):
                return []
            raise

    def remove_cluster(self, cluster_id: int, reason: str = "") -> dict[str, Any]:
        """condor_rm CLUSTER: its queued jobs and those not yet materialised."""
        return dict(self._call("POST", f"/clusters/{cluster_id}/remove", json={"reason": reason}))

    JOBS_PAGE = 10_000  # the pool's largest page (routes/jobs.MAX_JOBS_PAGE)

    def jobs(
        self,
        constraint: str | None = None,
        history: bool = False,
        long: bool = False,
        mine: bool = False,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Matching jobs, page after page (at most `limit` of them)."""
        params: dict[str, Any] = {"history": history, "long": long}
        if constraint:
            params["constraint"] = constraint
        if mine:
            params["mine"] = True
        found: list[dict[str, Any]] = []
        while limit is None or len(found) < limit:
            want = self.JOBS_PAGE if limit is None else min(self.JOBS_PAGE, limit - len(found))
            page = self._call("GET", "/jobs", params={**params, "limit": want})
            found += page
            if len(page) < want:
                break
            params["after"] = page[-1]["job_id"]
        return found

    def slots(self) -> list[dict[str, Any]]:
        """Every live slot, page after page."""
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {}
        while True:
            page = self._call("GET", "/slots", params=params)
            found += page["slots"]
            if not page["next"]:
                return found
            params["after"] = page["next"]

    def analyze(self, job_id: str, pilot: str | None = None) -> dict[str, Any]:
        params = {"pilot": pilot} if pilot else {}
        return self._call("GET", f"/jobs/{job_id}/analyze", params=params)

    def usage(self) -> dict[str, Any]:
        return self._call("GET", "/usage")

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

    def set_usage(self, submitter: str, core_seconds: float) -> dict[str, Any]:
        """Admin: set a submitter's accumulated usage; its userprio row after."""
        return self._call(
            "PUT", "/userprio/usage", json={"submitter": submitter, "usage": core_seconds}
        )

    def drains(self) -> list[dict[str, Any]]:
        """Admin: the drains that hold, with the live pilots each covers."""
        return self._call("GET", "/drains")

    def drain(self, kind: str, name: str, hard: bool = False, reason: str = "") -> dict[str, Any]:
        """Admin: drain a pilot, an entry or a site (kind); the pilots drained now."""
        return self._call("POST", "/drains", json={kind: name, "hard": hard, "reason": reason})

    def undrain(self, kind: str, name: str) -> dict[str, Any]:
        """Admin: lift a drain; the pilots that take jobs again."""
        return self._call("POST", "/drains/undrain", json={kind: name})

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
        """Every output of a completed job below `dest`, under the name it was
        reported with (stdout/stderr by base name, transferred outputs by
        their path relative to the job's Iwd)."""
        job = self._completed(job_id)
        written = []
        for out in job["outputs"]:
            if not _relative_safe(out["name"]):
                raise ClientError(f"job {job_id}: output name {out['name']!r} is not a safe path")
            self.download(out["sha256"], dest / out["name"])
            written.append(dest / out["name"])
        return written

    def fetch_in_place(self, job_id: str, skip_fetched: bool = False) -> list[Path]:
        """A completed job's outputs where HTCondor puts them (`Placement`):
        stdout/stderr at the ad's `Out`/`Err`, other outputs below `Iwd`,
        `TransferOutputRemaps` applied. With `skip_fetched`, a file already
        there with the same content is not downloaded again."""
        job = self._completed(job_id)
        where = Placement.of_ad(job["ad"])
        written = []
        for out in job["outputs"]:
            try:
                path = where.landing(out["name"])
            except ValueError as exc:
                raise ClientError(f"job {job_id}: {exc}") from None
            if skip_fetched and path.is_file() and sha256_of(path) == out["sha256"]:
                continue
            self.download(out["sha256"], path)
            written.append(path)
        return written

    def _completed(self, job_id: str) -> dict[str, Any]:
        """A completed job, or a held one that left outputs (held for an output it
        did not make: its stderr says why, as HTCondor would have brought it)."""
        job = self.job(job_id)
        if job["state"] != "completed" and not (job["state"] == "held" and job["outputs"]):
            raise ClientError(f"job {job_id} is {job['state']}, not completed: no outputs yet")
        if job.get("redacted"):
            raise ClientError(f"job {job_id} is not yours: its outputs are not shown to you")
        return job


MAX_DIRECTORY_FILES = 10_000  # files one transfer_input_files directory may hold
MAX_DIRECTORY_DEPTH = 32  # as deep as the pool takes sandbox paths


def directory_files(path: Path, contents: bool, source: str = "<submit>") -> list[tuple[str, Path]]:
    """(sandbox name, local file) of one `transfer_input_files` entry, as
    HTCondor transfers it: a file under its base name; a directory `dir` as
    `dir/...` and `dir/` as its contents, subdirectories kept.

    Symlinks to files are sent as the files they point at; symlinks to
    directories are not followed (no loops, no surprise trees) and empty
    directories are not recreated (only files travel). Bounded: at most
    MAX_DIRECTORY_FILES files, MAX_DIRECTORY_DEPTH levels."""
    if not path.is_dir():
        return [(path.name, path)]
    prefix = "" if contents else f"{path.name}/"
    found: list[tuple[str, Path]] = []
    for here, dirs, files in os.walk(path, followlinks=False):
        rel = Path(here).relative_to(path)
        if len(rel.parts) + (not contents) >= MAX_DIRECTORY_DEPTH:
            raise ClientError(
                f"{source}: {path}: deeper than {MAX_DIRECTORY_DEPTH} levels "
                f"at {rel} (transfer_input_files)"
            )
        dirs.sort()
        for name in sorted(files):
            local = Path(here) / name
            if not local.is_file():  # a dangling symlink, a socket...
                continue
            found.append((prefix + (rel / name).as_posix().removeprefix("./"), local))
            if len(found) > MAX_DIRECTORY_FILES:
                raise ClientError(
                    f"{source}: {path}: more than {MAX_DIRECTORY_FILES} files "
                    "(transfer_input_files); pack them in an archive"
                )
    return found


def check_layout(names: list[str], source: str = "<submit>") -> None:
    """A sandbox the pilot can lay out: no input is a file where another needs
    a directory (`a` and `a/b`). The same name twice is fine: the later wins,
    as in HTCondor."""
    files = set(names)
    for name in names:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in files:
                raise ClientError(
                    f"{source}: transfer_input_files: {parent!r} is a file, but {name!r} "
                    "needs a directory of that name in the sandbox"
                )


def _under(path: Path, iwd: Path | None) -> str:
    """With `preserve_relative_paths` (iwd given), the directories between Iwd
    and an input below it, which its sandbox name keeps ("" otherwise)."""
    if iwd is None or not path.is_relative_to(iwd) or path.parent == iwd:
        return ""
    parent = path.parent.relative_to(iwd).as_posix()
    return "" if parent == "." else f"{parent}/"


def _listed_inputs(transfer_input: str | None) -> tuple[dict[Path, int], set[Path]]:
    """The local entries of a TransferInput expression (how many times each is
    listed), and those that are `dir/` entries (the contents, not the directory)."""
    if not transfer_input:
        return {}, set()
    from glidewms.submit.exprs import evaluate

    value = evaluate(transfer_input)
    if not isinstance(value, str):
        return {}, set()
    names = [n.strip() for n in value.split(",") if n.strip() and "://" not in n]
    counts: dict[Path, int] = {}
    for n in names:
        counts[Path(n)] = counts.get(Path(n), 0) + 1
    return counts, {Path(n) for n in names if n.endswith("/")}


def _relative_safe(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and all(p not in ("", ".", "..") and "\0" not in p for p in parts)


def parse_remaps(text: str) -> dict[str, str]:
    """`TransferOutputRemaps`: "name = newpath; ..." with `\\;` and `\\=` escapes."""
    remaps: dict[str, str] = {}
    entry: list[str] = []
    entries: list[list[str]] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            entry.append("\\" + text[i + 1])
            i += 2
            continue
        if ch == ";":
            entries.append(entry)
            entry = []
        else:
            entry.append(ch)
        i += 1
    entries.append(entry)
    for tokens in entries:
        source, target, side = "", "", 0
        for t in tokens:
            if t == "=" and side == 0:
                side = 1
            elif side == 0:
                source += t[-1]
            else:
                target += t[-1]
        if source.strip() and target.strip():
            remaps[source.strip()] = target.strip()
    return remaps


@dataclass(frozen=True)
class Placement:
    """Where a job's outputs land on the submit side, from its ad."""

    iwd: Path
    out: str | None = None
    err: str | None = None
    remaps: dict[str, str] | None = None

    @classmethod
    def of_ad(cls, ad_text: str) -> Placement:
        from glidewms import classads

        ad = classads.parse_ad(ad_text, classads.CEILING)

        def text(name: str) -> str | None:
            value = classads.eval_attr(ad, name) if name in ad else None
            return value if isinstance(value, str) and value else None

        iwd = text("Iwd")
        if iwd is None or not iwd.startswith("/"):
            raise ClientError("the job's ad has no absolute Iwd: use --dest DIR")
        remaps = text("TransferOutputRemaps")
        return cls(Path(iwd), text("Out"), text("Err"), parse_remaps(remaps) if remaps else {})

    def landing(self, name: str) -> Path:
        """Where output `name` (as the pilot reported it) goes; ValueError for a
        name or a remap that would leave Iwd. A remap to an absolute path is
        taken as written: the user wrote it in the submit file."""
        for stream in (self.out, self.err):
            if stream and stream != "/dev/null" and name == os.path.basename(stream):
                return Path(stream)
        if not _relative_safe(name):
            raise ValueError(f"output name {name!r} is not a safe relative path")
        target = name
        for source, new in (self.remaps or {}).items():
            if name == source:
                target = new
            elif name.startswith(source.rstrip("/") + "/"):  # a remapped directory
                target = new.rstrip("/") + name[len(source.rstrip("/")) :]
            else:
                continue
            if target.startswith("/"):
                return Path(os.path.normpath(target))
            break
        path = Path(os.path.normpath(self.iwd / target))
        if not path.is_relative_to(self.iwd):
            raise ValueError(
                f"output {name!r}: remapped to {target!r}, outside the job's Iwd {self.iwd} "
                "(write an absolute path in transfer_output_remaps to mean it)"
            )
        return path
