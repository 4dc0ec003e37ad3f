"""File-transfer plugins: the URLs of ``transfer_input_files``, fetched on the node.

As on an HTCondor execute node, a URL input is fetched by a plugin for its
scheme, not by the submit side: the job asked (submit added
``stringListIMember(scheme, TARGET.HasFileTransferPluginMethods)``) for a
slot that publishes the scheme, and the pilot publishes what its registry
holds (``Plugins.methods``). The file lands in the sandbox under the last
component of the URL's path.

The registry maps a scheme to a fetcher ``(url, dest, bounds) -> None``.
http and https are built in (urllib; bounded in bytes and seconds; redirects
only to http/https; a pre-signed URL's query never appears in logs or hold
reasons, see ``redact``). An entry can add schemes, or replace
the built-in ones, with executables in ``GLIDEIN_TRANSFER_PLUGIN_DIR``: each
answers ``PLUGIN -classad`` with a ``SupportedMethods = "a,b"`` line. One
that says ``MultipleFileSupport = true`` gets the URL in an ``-infile`` and
answers in an ``-outfile`` (HTCondor's current convention: a URL may carry a
secret, and command lines are visible on the node); others are run as
``PLUGIN URL DEST`` (exit 0: done), the older one. Plugins run with a clean
environment, never the pilot's (it names the pilot's token file).

Every failure is a ``TransferError``: the job cannot run as asked, and the
pool holds it with HTCondor's TransferInputError code, the reason naming
the URL (claims.py).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .jobs import InputError, JobSetupError, check_name

log = logging.getLogger(__name__)

CHUNK = 1 << 16
MAX_URL_BYTES = 8192
MAX_PLUGINS = 64  # executables looked at in a plugin directory
MAX_PLUGIN_OUTPUT = 64 * 1024  # bytes of a plugin's answer kept


class TransferError(InputError):
    """A URL input that could not be fetched; ``subcode`` is an errno when one applies."""

    def __init__(self, url: str, reason: str, subcode: int = 0) -> None:
        super().__init__(f"{redact(url)}: {reason}", subcode)
        self.url, self.reason = url, reason


@dataclass(frozen=True)
class Bounds:
    """How much one URL input may cost: bytes, and seconds (per read and in all)."""

    max_bytes: int = 8 * 1024**3
    read_timeout: float = 60.0
    total_seconds: float = 3600.0


Fetcher = Callable[[str, str, Bounds], None]


def redact(url: str) -> str:
    """A URL as it may appear in logs and hold reasons: no user:password, no query
    (pre-signed URLs carry their secret there)."""
    try:
        parts = urllib.parse.urlsplit(url[:MAX_URL_BYTES])
    except ValueError:
        return "<unparseable URL>"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def url_file_name(url: str) -> str:
    """Where a URL input lands in the sandbox: the last component of its path."""
    try:
        path = urllib.parse.urlsplit(url).path
    except ValueError:
        raise TransferError(url, "not a URL") from None
    name = urllib.parse.unquote(path.rsplit("/", 1)[-1])
    try:
        return check_name(name)
    except JobSetupError:
        raise TransferError(url, "the URL's path names no file to put in the sandbox") from None


class _NoOtherSchemes(urllib.request.HTTPRedirectHandler):
    """Redirects stay on http/https (urllib would also follow ftp)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if scheme_of(newurl) not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, "redirect to another scheme", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    """Made per fetch, so that the proxy settings of the environment are read
    as they are then (an opener keeps those of its making)."""
    return urllib.request.build_opener(_NoOtherSchemes())


def fetch_http(url: str, dest: str, bounds: Bounds) -> None:
    """GET ``url`` into ``dest`` (created, never followed if a symlink)."""
    deadline = time.monotonic() + bounds.total_seconds
    request = urllib.request.Request(url, headers={"User-Agent": "glidewms-pilot"})
    try:
        with _opener().open(request, timeout=bounds.read_timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > bounds.max_bytes:
                raise TransferError(
                    url, f"{declared} bytes, more than the {bounds.max_bytes} allowed", errno.EFBIG
                )
            fd = os.open(
                dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
            )
            with os.fdopen(fd, "wb") as out:
                total = 0
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > bounds.max_bytes:
                        raise TransferError(
                            url, f"more than the {bounds.max_bytes} bytes allowed", errno.EFBIG
                        )
                    if time.monotonic() > deadline:
                        raise TransferError(
                            url, f"not done after {bounds.total_seconds:.0f}s", errno.ETIMEDOUT
                        )
                    out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise TransferError(url, f"HTTP {exc.code} {exc.reason}", errno.EIO) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        code = getattr(reason, "errno", None) or errno.EIO
        raise TransferError(url, f"cannot fetch: {reason}", code) from None
    except (socket.timeout, TimeoutError):
        raise TransferError(url, "timed out", errno.ETIMEDOUT) from None
    except OSError as exc:
        raise TransferError(url, f"cannot fetch: {exc.strerror or exc}", exc.errno or 0) from None
    except ValueError:  # urllib's "unknown url type", a bad port... (its text quotes the URL)
        raise TransferError(url, "not a URL urllib can fetch", errno.EINVAL) from None


def _plugin_env() -> Dict[str, str]:
    env = {"PATH": os.environ.get("PATH") or "/usr/bin:/bin", "LANG": "C"}
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


_METHODS_RE = re.compile(r'^\s*SupportedMethods\s*=\s*"([^"]*)"', re.IGNORECASE | re.MULTILINE)


_MULTI_RE = re.compile(r"^\s*MultipleFileSupport\s*=\s*true\b", re.IGNORECASE | re.MULTILINE)


def plugin_methods(path: str, timeout: float = 30.0) -> tuple[list[str], bool]:
    """The schemes an executable plugin says it fetches (``PLUGIN -classad``; none
    if it does not answer as a plugin), and whether it takes ``-infile``."""
    try:
        done = subprocess.run(
            [path, "-classad"],
            capture_output=True,
            timeout=timeout,
            env=_plugin_env(),
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("transfer plugin %s: cannot ask it for its methods: %s", path, exc)
        return [], False
    said = done.stdout[:MAX_PLUGIN_OUTPUT].decode("utf-8", "replace")
    found = _METHODS_RE.search(said)
    if done.returncode != 0 or found is None:
        log.warning("transfer plugin %s: no SupportedMethods in its -classad answer", path)
        return [], False
    methods = [
        m.strip().lower()
        for m in found.group(1).split(",")
        if re.fullmatch(r"\s*[A-Za-z][A-Za-z0-9+.-]*\s*", m)
    ]
    return methods, _MULTI_RE.search(said) is not None


def _classad_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_SUCCESS_RE = re.compile(r"\bTransferSuccess\s*=\s*(true|false)\b", re.IGNORECASE)
_ERROR_RE = re.compile(r'\bTransferError\s*=\s*"((?:[^"\\]|\\.)*)"', re.IGNORECASE)


def executable_fetcher(path: str, multi: bool = False) -> Fetcher:
    """A fetcher that runs the plugin, bounded in time; a file bigger than allowed
    is removed and refused. A plugin with ``MultipleFileSupport`` gets the URL in
    an ``-infile`` (``[ Url = "..."; LocalFileName = "..." ]``) and answers in an
    ``-outfile`` (``TransferSuccess``, ``TransferError``): the URL, which may
    carry a secret, is then on no command line. Others run as ``PLUGIN URL DEST``."""

    def fetch(url: str, dest: str, bounds: Bounds) -> None:
        with tempfile.TemporaryDirectory(prefix="glidewms-plugin-") as scratch:
            infile, outfile = os.path.join(scratch, "in"), os.path.join(scratch, "out")
            if multi:
                with open(infile, "w", encoding="utf-8") as f:
                    f.write(f"[ Url = {_classad_string(url)}; ")
                    f.write(f"LocalFileName = {_classad_string(dest)} ]\n")
                argv = [path, "-infile", infile, "-outfile", outfile]
            else:
                argv = [path, url, dest]
            done = _run_plugin(path, argv, url, bounds)
            if multi:
                _check_outfile(path, outfile, url)
        if done.returncode != 0:
            said = done.stderr[-512:].decode("utf-8", "replace").strip()
            raise TransferError(
                url,
                f"plugin {os.path.basename(path)} exited {done.returncode}: {said}",
                errno.EIO,
            )
        try:
            info = os.lstat(dest)
        except OSError:
            raise TransferError(url, "the plugin made no file", errno.ENOENT) from None
        if not stat.S_ISREG(info.st_mode) or info.st_size > bounds.max_bytes:
            os.unlink(dest)
            raise TransferError(url, "the plugin made no regular file within bounds", errno.EFBIG)

    return fetch


def _check_outfile(path: str, outfile: str, url: str) -> None:
    """A multi-file plugin's verdict: ``TransferSuccess = false`` is a failure with
    its ``TransferError``; no verdict at all is one too."""
    try:
        with open(outfile, encoding="utf-8", errors="replace") as f:
            said = f.read(MAX_PLUGIN_OUTPUT)
    except OSError:
        said = ""
    success = _SUCCESS_RE.search(said)
    if success is not None and success.group(1).lower() == "true":
        return
    error = _ERROR_RE.search(said)
    why = error.group(1)[:512] if error else "no TransferSuccess in its -outfile"
    raise TransferError(url, f"plugin {os.path.basename(path)}: {why}", errno.EIO)


def _run_plugin(path: str, argv: list[str], url: str, bounds: Bounds) -> Any:
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            timeout=bounds.total_seconds,
            env=_plugin_env(),
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TransferError(
            url, f"plugin {os.path.basename(path)} timed out", errno.ETIMEDOUT
        ) from None
    except OSError as exc:
        raise TransferError(url, f"plugin {path}: {exc.strerror}", exc.errno or 0) from None


class Plugins:
    """Scheme → fetcher; ``fetch`` puts one URL into a sandbox."""

    def __init__(self, fetchers: Mapping[str, Fetcher], bounds: Optional[Bounds] = None) -> None:
        self.fetchers = {k.lower(): v for k, v in fetchers.items()}
        self.bounds = bounds or Bounds()

    def methods(self) -> str:
        """``HasFileTransferPluginMethods`` of the slot ad: "http,https"."""
        return ",".join(sorted(self.fetchers))

    def fetch(self, url: str, sandbox: str) -> str:
        """Fetch ``url`` into ``sandbox``; its sandbox name, or TransferError."""
        if len(url) > MAX_URL_BYTES:
            raise TransferError(url, f"longer than {MAX_URL_BYTES} characters", errno.EINVAL)
        scheme = scheme_of(url)
        fetcher = self.fetchers.get(scheme)
        if fetcher is None:
            raise TransferError(
                url, f"no transfer plugin for {scheme or 'this'}:// on this pilot", errno.ENOTSUP
            )
        name = url_file_name(url)
        dest = os.path.join(sandbox, name)
        try:
            if stat.S_ISREG(os.lstat(dest).st_mode):
                os.unlink(dest)  # a URL input replaces a sandbox file of its name
            else:
                raise TransferError(url, f"{name!r} is already in the sandbox", errno.EEXIST)
        except FileNotFoundError:
            pass
        try:
            fetcher(url, dest, self.bounds)
        except TransferError:
            _unlink(dest)
            raise
        except Exception as exc:  # a plugin's bug is this URL's failure, not the pilot's
            _unlink(dest)
            # its type only: a message may quote the URL, and the URL a secret
            raise TransferError(url, f"plugin failed: {type(exc).__name__}", errno.EIO) from None
        log.info("fetched %s into the sandbox as %s", redact(url), name)
        return name


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


BUILTIN: Dict[str, Fetcher] = {"http": fetch_http, "https": fetch_http}
_CACHE: Dict[Tuple[str, ...], Plugins] = {}


def _number(values: Mapping[str, str], key: str, default: float) -> float:
    raw = (values.get(key) or "").strip()
    try:
        value = float(raw)
    except ValueError:
        return default
    return value if value > 0 else default


def plugins_for(values: Mapping[str, str]) -> Plugins:
    """The registry an entry configures (glidein_config values): the built-in
    plugins, plus the executables of ``GLIDEIN_TRANSFER_PLUGIN_DIR``; bounds from
    ``GLIDEIN_TRANSFER_MAX_BYTES`` and ``GLIDEIN_TRANSFER_TIMEOUT`` (seconds).
    Asked once per configuration: the slot ad and every claim use the same."""
    plugin_dir = (values.get("GLIDEIN_TRANSFER_PLUGIN_DIR") or "").strip()
    bounds = Bounds(
        max_bytes=int(_number(values, "GLIDEIN_TRANSFER_MAX_BYTES", Bounds.max_bytes)),
        total_seconds=_number(values, "GLIDEIN_TRANSFER_TIMEOUT", Bounds.total_seconds),
    )
    key = (plugin_dir, str(bounds.max_bytes), str(bounds.total_seconds))
    if key in _CACHE:
        return _CACHE[key]
    fetchers: Dict[str, Fetcher] = dict(BUILTIN)
    if plugin_dir:
        try:
            names = sorted(os.listdir(plugin_dir))[:MAX_PLUGINS]
        except OSError as exc:
            log.warning("transfer plugin directory %s: %s", plugin_dir, exc.strerror)
            names = []
        for name in names:
            path = os.path.join(plugin_dir, name)
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                continue
            methods, multi = plugin_methods(path)
            for method in methods:
                fetchers[method] = executable_fetcher(path, multi)
    plugins = _CACHE[key] = Plugins(fetchers, bounds)
    return plugins
