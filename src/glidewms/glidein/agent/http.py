"""A small JSON-over-HTTP client for the pool and factory APIs (urllib only).

Why not a library: the agent runs on worker nodes with a bare python3. What
urllib gives for free is kept: ``http_proxy``/``https_proxy``/``no_proxy`` are
honoured by the default ProxyHandler. What it does wrong for us is removed:
redirects are not followed, because urllib would replay the Authorization
header to whatever host the redirect names.

The bearer token is read from its file on every request, so a token renewed
in place (by the batch system or a credential helper) is picked up by a
running pilot; it is never logged and never put in an exception message.

JSON calls go through http.client directly unless a proxy applies (then
urllib's handlers do): a busy pilot makes several calls per second and
urllib's handler chain costs more than the call. Each thread keeps its
connection open between calls (HTTP keep-alive) with Nagle's algorithm off
(TCP_NODELAY): a request is one send() and waits for no delayed ACK. A kept
connection idle for longer than ``KEEP_IDLE`` is not reused (servers close
idle ones: uvicorn after 5 s), and a request that fails on a reused
connection before any answer came back is sent once more on a fresh one.

An https service is verified against ``ca_file`` alone when one is given
(the bootstrap writes the factory's CA bundle there: ``GLIDEIN_CA_File``),
else against the node's system store; one SSL context per ``Api``, made
once (loading a store costs milliseconds, a connection should not).

The protocol version: the agent speaks ``API_MAJOR`` (it cannot import
``glidewms.protocol``, which is not shipped; a unit test keeps the two
equal). Services name their version in the ``Glidewms-Api-Version`` header
of every answer; an ``Api`` made with ``check_version`` (the pool's) raises
``IncompatiblePeer`` for an answer of another major version. A missing
header is allowed (proxies may strip it), and so is a newer minor version.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import os
import random
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from typing import Any, BinaryIO, Callable, Optional, TypeVar, Union
from urllib.parse import quote, urlsplit

log = logging.getLogger(__name__)

API_MAJOR = 1  # the protocol's major version this agent speaks (glidewms.protocol)
API_PREFIX = f"/api/v{API_MAJOR}/"
VERSION_HEADER = "Glidewms-Api-Version"

Body = Union[bytes, BinaryIO, None]
_CHUNK = 1 << 20
T = TypeVar("T")
KEEP_IDLE = 2.0  # seconds a kept connection may stay idle and still be reused
TOKEN_REREAD = 1.0  # seconds a token read stays trusted while its file looks unchanged
# a kept connection the server closed in the meantime fails with one of these
# before any answer: the request did not reach the application
_STALE = (
    http.client.RemoteDisconnected,
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
)


class HttpStatusError(Exception):
    """The server answered with an error status (4xx, or 5xx after the retries);
    ``retry_after``: the seconds its Retry-After header asked for, if any."""

    def __init__(
        self, method: str, path: str, status: int, detail: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


RETRY_CAP = 60.0  # seconds: the longest back-off between two tries
RETRY_AFTER_CAP = 300.0  # the longest wait a server's Retry-After may ask for


def retry_delay(
    attempt: int,
    base: float,
    retry_after: float | None = None,
    draw: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to wait after failed try number ``attempt`` (1, 2...).

    Capped exponential back-off with jitter (a draw in [d/2, d]), so that the
    thousands of pilots of a site that lost the pool at the same instant do
    not come back at the same instant; a server's Retry-After (429, 503) is
    honoured when longer, within RETRY_AFTER_CAP.
    """
    delay = min(RETRY_CAP, base * 2 ** min(attempt - 1, 30))
    delay = draw(delay / 2, delay)
    if retry_after is not None and retry_after > delay:
        delay = min(retry_after, RETRY_AFTER_CAP)
    return delay


def retry_after_of(headers: Any) -> float | None:
    """A Retry-After header's seconds (the date form is not used by our services)."""
    value = (headers.get("Retry-After") if headers is not None else None) or ""
    value = value.strip()
    return float(value) if value.isdigit() and len(value) <= 6 else None


class TransportError(Exception):
    """The server could not be reached or the connection broke (after the retries)."""


class IntegrityError(Exception):
    """Downloaded bytes do not have the sha256 they were asked for."""


class IncompatiblePeer(Exception):
    """The service answered with a protocol major version other than ours.

    Not a transport error: no retry or later call can fix it, so the pilot
    stops (with reason ``error``) at the first one.
    """


def require_major(where: str, header: Optional[str]) -> None:
    """Raise IncompatiblePeer unless ``header`` (``MAJOR.MINOR``) names our major
    version; a missing header passes."""
    if header is None:
        return
    major, _, _minor = header.partition(".")
    if not major.isdigit() or int(major) != API_MAJOR:
        raise IncompatiblePeer(
            f"{where} speaks protocol {header!r}; this pilot speaks {API_MAJOR}.x"
        )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: following one would send the bearer token elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


def segment(value: str) -> str:
    """Quote one path segment (ids come from servers and configs, not from us)."""
    return quote(str(value), safe="")


def select_token(text: str, key: str = "") -> str:
    """The token a call sends, from the token file's text.

    A pilot serving one pool has a file holding its token. One serving
    several (pools.py) has one file too (the factory ships and renews it as
    one): its first line is the first pool's token (what the bootstrap and
    the factory calls use), then one ``pool URL TOKEN`` line per pool, so
    each pool is sent its own token only. ``key`` names the pool URL; no key
    (or a file without such lines) means the first line. A key with no line
    gives "": the pool refuses the call and the pilot stops serving it.
    """
    lines = text.split("\n")
    if key:
        keyed = [line.split() for line in lines if line.startswith("pool ")]
        if keyed:
            return next((p[2] for p in keyed if len(p) == 3 and p[1] == key), "")
    return next((line.strip() for line in lines if line.strip()), "")


class Api:
    """One service's ``/api/v1`` with a bearer token, timeouts and retries.

    ``abort`` (an Event) cuts retry back-off short when the pilot is exiting,
    so a dead server cannot hold up the final report. ``check_version``: every
    answer must be of our protocol major version (see the module docstring).
    """

    def __init__(
        self,
        base_url: str,
        token_file: str,
        *,
        backoff: float = 1.0,
        abort: threading.Event | None = None,
        check_version: bool = False,
        ca_file: Optional[str] = None,
        token_key: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/") + API_PREFIX
        self.token_file = token_file
        self.token_key = token_key  # which ``pool URL TOKEN`` line is ours (select_token)
        self.backoff = backoff
        self.abort = abort or threading.Event()
        self.check_version = check_version
        parts = urlsplit(self.base_url)
        self._ssl: Optional[ssl.SSLContext] = None
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if parts.scheme == "https":
            self._ssl = ssl.create_default_context(cafile=ca_file)
            handlers.append(urllib.request.HTTPSHandler(context=self._ssl))
        self._opener = urllib.request.build_opener(*handlers)
        self._direct = _no_proxy_for(parts.scheme, parts.hostname or "")
        self._scheme, self._netloc, self._path = parts.scheme, parts.netloc, parts.path
        self._local = threading.local()  # .conn: (kept connection, last used) per thread
        self._token_kept: Optional[tuple[tuple[int, int, int], str, float]] = None

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's kept connection if fresh enough, else a new one;
        (connection, reused)."""
        kept: Optional[tuple[http.client.HTTPConnection, float]] = getattr(
            self._local, "conn", None
        )
        self._local.conn = None
        if kept is not None:
            conn, last_used = kept
            if conn.sock is not None and time.monotonic() - last_used < KEEP_IDLE:
                conn.sock.settimeout(timeout)
                return conn, True
            conn.close()
        if self._scheme == "https":
            conn = http.client.HTTPSConnection(self._netloc, timeout=timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._netloc, timeout=timeout)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    def _direct_call(
        self, method: str, path: str, data: Optional[bytes], headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes]:
        """One request with http.client on this thread's kept connection
        (cheaper than urllib's handler chain); an error status raises
        HTTPError as urllib's would, redirects included (never followed)."""
        headers = {"Authorization": f"Bearer {self._token()}", **headers}
        while True:
            conn, reused = self._connection(timeout)
            try:
                conn.request(method, self._path + path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except _STALE:
                conn.close()
                if not reused:
                    raise
                # the server closed the kept connection: once more, on a new one
            except BaseException:
                conn.close()
                raise
        if response.will_close or conn.sock is None:
            conn.close()
        else:
            self._local.conn = (conn, time.monotonic())
        self._check(response.headers)
        if response.status >= 300:
            raise urllib.error.HTTPError(
                self.base_url + path,
                response.status,
                response.reason,
                response.headers,
                io.BytesIO(raw),
            )
        return response.status, raw

    def _check(self, headers: Any) -> None:
        """Refuse an answer of another protocol major version (IncompatiblePeer)."""
        if self.check_version and headers is not None:
            require_major(self.base_url, headers.get(VERSION_HEADER))

    def close(self) -> None:
        """Close this thread's kept connection (others close when their thread ends)."""
        kept = getattr(self._local, "conn", None)
        self._local.conn = None
        if kept is not None:
            kept[0].close()

    def _token(self) -> str:
        """The token file's content, re-read when the file changed.

        The factory (or the bootstrap) replaces the file when it renews the
        token; one ``stat`` per call notices that, where reading the file
        cost several system calls on every call of a busy pilot. A file
        rewritten in place within one tick of the file system's clock keeps
        its inode, size and mtime: it is re-read at least every second anyway.
        """
        info = os.stat(self.token_file)
        key = (info.st_ino, info.st_mtime_ns, info.st_size)
        now = time.monotonic()
        kept = self._token_kept
        if kept is not None and kept[0] == key and now - kept[2] < TOKEN_REREAD:
            return kept[1]
        with open(self.token_file, encoding="utf-8") as handle:
            token = select_token(handle.read(), self.token_key)
        self._token_kept = (key, token, now)
        return token

    def _request(
        self, method: str, path: str, body: Body, headers: dict[str, str]
    ) -> urllib.request.Request:
        all_headers = {"Authorization": f"Bearer {self._token()}", **headers}
        return urllib.request.Request(
            self.base_url + path, data=body, method=method, headers=all_headers
        )

    def _retrying(
        self,
        method: str,
        path: str,
        tries: int,
        attempt_fn: Callable[[], T],
        patience: float | None = None,
    ) -> T:
        """Run ``attempt_fn`` again on transport errors, 429 and 5xx: up to
        ``tries`` times, or, with ``patience``, for as long as the next try
        starts within ``patience`` seconds of the first (riding out an outage
        of the service); waits from ``retry_delay``."""
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            final: Exception
            try:
                return attempt_fn()
            except urllib.error.HTTPError as exc:
                self._check(exc.headers)
                detail = _error_detail(exc)
                retry_after = retry_after_of(exc.headers)
                final = HttpStatusError(method, path, exc.code, detail, retry_after)
                if exc.code < 500 and exc.code != 429:
                    raise final from None
                problem = f"HTTP {exc.code}: {detail}"
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                final = TransportError(f"{method} {path}: {reason}")
                if isinstance(reason, ssl.SSLCertVerificationError):
                    raise final from None  # a certificate will not verify by waiting
                problem = str(reason)
            delay = retry_delay(attempt, self.backoff, retry_after)
            if patience is None:
                last = attempt >= tries
                more = f"{attempt}/{tries - 1}"
            else:
                last = time.monotonic() - start + delay > patience
                more = f"{attempt} (for up to {patience:.0f}s)"
            if last:
                raise final from None
            log.warning("%s %s failed (%s); retry %s in %.1fs", method, path, problem, more, delay)
            if self.abort.wait(delay):
                raise TransportError(f"{method} {path}: aborted while retrying")

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 30.0,
        tries: int = 3,
        patience: float | None = None,
    ) -> tuple[int, Any]:
        """Send ``body`` as JSON; return (status, decoded JSON or None).
        Retried as ``_retrying`` says (``patience``: seconds, instead of tries)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"

        def attempt() -> tuple[int, Any]:
            if self._direct:
                status, raw = self._direct_call(method, path, data, headers, timeout)
            else:
                request = self._request(method, path, data, headers)
                with self._opener.open(request, timeout=timeout) as response:
                    self._check(response.headers)
                    raw = response.read()
                    status = response.status
            try:
                return status, (json.loads(raw) if raw.strip() else None)
            except ValueError:
                raise TransportError(f"{method} {path}: the answer is not JSON") from None

        return self._retrying(method, path, tries, attempt, patience)

    def download(
        self, path: str, dest: str, sha256: str, timeout: float = 60.0, tries: int = 3
    ) -> None:
        """Stream ``path`` into ``dest``; raise IntegrityError unless it hashes to sha256."""

        def attempt() -> str:
            digest = hashlib.sha256()
            request = self._request("GET", path, None, {})
            with self._opener.open(request, timeout=timeout) as response, open(dest, "wb") as out:
                self._check(response.headers)
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
            return digest.hexdigest()

        got = self._retrying("GET", path, tries, attempt)
        if got != sha256.lower():
            os.unlink(dest)
            raise IntegrityError(f"{path}: got sha256 {got}, expected {sha256}")

    def upload(self, path: str, src: str, timeout: float = 60.0, tries: int = 3) -> None:
        """PUT the raw bytes of file ``src`` (streamed, not loaded into memory)."""
        size = os.path.getsize(src)

        def attempt() -> None:
            with open(src, "rb") as handle:
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                }
                request = self._request("PUT", path, handle, headers)
                with self._opener.open(request, timeout=timeout) as response:
                    self._check(response.headers)
                    response.read()

        self._retrying("PUT", path, tries, attempt)


def _no_proxy_for(scheme: str, host: str) -> bool:
    """No proxy applies to this URL (proxies go through urllib's handlers)."""
    proxies = urllib.request.getproxies()
    return scheme not in proxies or bool(urllib.request.proxy_bypass(host))


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The ``detail`` of a JSON error body, else the start of the body."""
    try:
        raw = exc.read()
    except OSError:
        return exc.reason or ""
    try:
        detail = json.loads(raw).get("detail")
        return detail if isinstance(detail, str) else json.dumps(detail)
    except (ValueError, AttributeError):
        return raw[:200].decode("utf-8", "replace") or str(exc.reason)


def sha256_file(path: str) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
