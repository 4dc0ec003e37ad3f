"""Run a whole glidewms installation on this machine: `glidewms up` and the demo.

It creates the two issuer key pairs and the tokens each actor needs, writes
one YAML config per service (so an operator can read and reuse them), starts each
service as its own process talking HTTP on loopback, and waits for each to
publish its URL. Nothing here starts a pilot: pilots come only from the
factory, when the frontend asks for them.

Keys: `keys/issuer.key` signs the tokens written here (user, admin, frontend, metrics)
and is given to no service; the pool gets only `keys/pilot_issuer.key`, which
signs pilot tokens and nothing else (security/tokens.py). Every service
verifies with both public keys.

With `tls` (`glidewms up --tls`) every service speaks HTTPS with one
certificate for the loopback names, signed by a private CA made here
(`security.tls.loopback_tls`, under `tls/`); the frontend, the factory's
pilots and the clients (client.json's `ca_file`) trust that CA alone.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from glidewms.config.pool import PoolConfig
from glidewms.db import make_engine, sqlite_url
from glidewms.factory.backends.isolation import for_installation
from glidewms.factory.backends.local import LocalId, read_proc_stat
from glidewms.factory.store import FactoryStore
from glidewms.security.tls import loopback_tls
from glidewms.security.tokens import TokenIssuer, generate_keypair, write_secret

SERVICES = ("pool", "factory", "frontend", "web")  # stopped in reverse order


class LaunchError(RuntimeError):
    pass


@dataclass
class Options:
    """Knobs of a one-machine installation; the defaults suit `glidewms up`."""

    state_dir: Path = Path("glidewms-state")
    entries: list[dict[str, Any]] | None = None
    pilot_idle_timeout: int = 300
    pilot_cpus: int | str = 2
    max_pilots: int = 4
    frontend_cycle: float = 5.0
    factory_cycle: float = 5.0
    claim_lease: float = 60.0
    heartbeat: float = 20.0
    user: str = field(default_factory=getpass.getuser)
    extra_pool: dict[str, Any] = field(default_factory=dict)
    extra_frontend: dict[str, Any] = field(default_factory=dict)  # e.g. from --config-dir
    # the frontend's groups; None gives one group, main, matching every entry
    frontend_groups: list[dict[str, Any]] | None = None
    tls: bool = False  # HTTPS everywhere, with a private CA (see the module docstring)
    # local pilots' jobs neither as another account (root) nor sandboxed: run anyway
    allow_unisolated_jobs: bool = False
    web: bool = True  # the web console, a fourth process (glidewms/web/)
    timeseries_seconds: float = 60.0  # how often the services sample the plots' series


@dataclass
class Running:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    restarts: list[float] = field(default_factory=list)  # monotonic times of restarts


# A service that dies is started again in place (same config, same port), as a
# supervisor would; one that keeps dying is a fault to report, not to hide.
MAX_RESTARTS = 5
RESTART_WINDOW = 300.0  # seconds


def may_restart(restarts: list[float], now: float) -> bool:
    """Whether a dead service gets another start: fewer than MAX_RESTARTS in
    the last RESTART_WINDOW seconds."""
    return sum(1 for t in restarts if now - t < RESTART_WINDOW) < MAX_RESTARTS


class Installation:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.root = options.state_dir.resolve()
        self.services: dict[str, Running] = {}

    # ------------------------------------------------------------ set-up

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def prepare(self) -> None:
        """Keys, tokens and the pool/factory configs (the frontend's needs URLs)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)  # keys, tokens, databases: no other account's business
        private, public = generate_keypair(self.path("keys"))
        pilot_private, pilot_public = generate_keypair(self.path("keys"), "pilot_issuer")
        issuer = TokenIssuer.from_file(private)
        year = 365 * 24 * 3600.0
        write_secret(
            self.path("tokens", "user.token"), issuer.issue(self.options.user, ["user"], year)
        )
        write_secret(self.path("tokens", "admin.token"), issuer.issue("admin", ["admin"], year))
        write_secret(
            self.path("tokens", "frontend.token"), issuer.issue("frontend", ["frontend"], year)
        )
        # read-only scrapes of /metrics (Prometheus: `credentials_file`), nothing else
        write_secret(
            self.path("tokens", "metrics.token"), issuer.issue("metrics", ["metrics"], year)
        )
        o = self.options
        self._write_config(
            "pool",
            {
                "listen_port": self.kept_port("pool"),
                "state_dir": str(self.path("pool")),
                "url_file": str(self.path("run", "pool.url")),
                "issuer_public_key": str(public),
                "pilot_issuer_public_key": str(pilot_public),
                "pilot_issuer_private_key": str(pilot_private),
                "claim_lease_seconds": o.claim_lease,
                "pilot_lease_seconds": max(o.claim_lease, o.heartbeat * 3),
                "heartbeat_seconds": o.heartbeat,
                "timeseries_seconds": o.timeseries_seconds,
                **self.tls_settings(client=False),
                **pool_settings(o),
            },
        )
        # entries given without an idle timeout take the installation's (the demo's 5 s)
        custom = [{"idle_timeout": o.pilot_idle_timeout, **e} for e in o.entries or []]
        entries = custom or [
            {
                "name": "local",
                "site": "LOCAL",
                "backend": "local",
                "cpus": o.pilot_cpus,
                "memory": "auto",
                "disk": "auto",
                "walltime": 3600,
                "idle_timeout": o.pilot_idle_timeout,
                "max_pilots": o.max_pilots,
                "max_idle": o.max_pilots,
                "max_per_cycle": o.max_pilots,
            }
        ]
        for entry in entries:
            for_installation(entry, self.root, o.allow_unisolated_jobs)
        self._write_config(
            "factory",
            {
                "listen_port": self.kept_port("factory"),
                "state_dir": str(self.path("factory")),
                "url_file": str(self.path("run", "factory.url")),
                "issuer_public_key": str(public),
                "pilot_issuer_public_key": str(pilot_public),
                "cycle_seconds": o.factory_cycle,
                "timeseries_seconds": o.timeseries_seconds,
                "entries": entries,
                **self.tls_settings(client=True),  # its ca_file goes to the pilots
            },
        )

    # ------------------------------------------------------------ TLS

    @property
    def ca_file(self) -> Path | None:
        """The private CA's certificate clients verify services with (None: plain HTTP)."""
        return self.path("tls", "ca.pem") if self.options.tls else None

    def tls_settings(self, client: bool) -> dict[str, str]:
        """A service's `tls_cert`/`tls_key` (and `ca_file` for one that is a
        client or starts pilots); nothing without `tls`. Made on first use."""
        if not self.options.tls:
            return {}
        files = loopback_tls(self.path("tls"))
        settings = {"tls_cert": str(files.cert), "tls_key": str(files.key)}
        return {**settings, "ca_file": str(files.ca)} if client else settings

    def kept_port(self, name: str) -> int:
        """The port an earlier start of this installation gave `name` (0: none
        yet, the system picks one). Keeping it means a service restarted after
        a crash, or the whole installation after a reboot, is where the
        frontend, the pilots and the users' client.json expect it."""
        try:
            data = yaml.safe_load(self.path("config", f"{name}.yaml").read_text())
            port = int(data.get("listen_port") or 0)
        except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
            return 0
        return port if 0 < port < 65536 else 0

    def _keep_port(self, name: str) -> None:
        """Write the port the system picked into the config, for the next start."""
        path = self.path("config", f"{name}.yaml")
        port = urlsplit(self.services[name].url).port
        data = yaml.safe_load(path.read_text())
        if port and not data.get("listen_port"):
            data["listen_port"] = port
            self._write_config(name, data)

    def _write_config(self, name: str, data: dict[str, Any]) -> Path:
        path = self.path("config", f"{name}.yaml")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"# glidewms {name} configuration written by `glidewms up`\n"
            + yaml.safe_dump(data, sort_keys=False)
        )
        return path

    # ------------------------------------------------------------ processes

    def start(self, on_step: Callable[[str], None] = lambda _: None, timeout: float = 60.0) -> None:
        self.path("run").mkdir(parents=True, exist_ok=True)
        self.path("logs").mkdir(parents=True, exist_ok=True)
        for name in ("pool", "factory"):
            self._spawn(name)
        for name in ("pool", "factory"):
            self._await_url(name, timeout)
            on_step(f"{name} listening on {self.services[name].url}")
        self._write_config(
            "frontend",
            {
                "listen_port": self.kept_port("frontend"),
                "state_dir": str(self.path("frontend")),
                "url_file": str(self.path("run", "frontend.url")),
                "issuer_public_key": str(self.path("keys", "issuer.pub")),
                "pilot_issuer_public_key": str(self.path("keys", "pilot_issuer.pub")),
                "pool_url": self.services["pool"].url,
                "factory_url": self.services["factory"].url,
                "token_file": str(self.path("tokens", "frontend.token")),
                "cycle_seconds": self.options.frontend_cycle,
                "timeseries_seconds": self.options.timeseries_seconds,
                "groups": self.options.frontend_groups
                or [{"name": "main", "max_idle_per_entry": self.options.max_pilots}],
                **self.tls_settings(client=True),
                **self.options.extra_frontend,
            },
        )
        self._spawn("frontend")
        self._await_url("frontend", timeout)
        on_step(f"frontend listening on {self.services['frontend'].url}")
        if self.options.web:
            self._write_web_config()
            self._spawn("web")
            self._await_url("web", timeout)
            on_step(f"web console on {self.services['web'].url} (log in with a token)")
        self.path("client.json").write_text(
            json.dumps(
                {
                    "pool_url": self.services["pool"].url,
                    "token_file": str(self.path("tokens", "user.token")),
                    **({"ca_file": str(self.ca_file)} if self.ca_file else {}),
                },
                indent=2,
            )
            + "\n"
        )

    def _write_web_config(self) -> None:
        """The console talks to the three services; it holds no key (visitors
        log in with their tokens)."""
        self._write_config(
            "web",
            {
                "listen_port": self.kept_port("web"),
                "url_file": str(self.path("run", "web.url")),
                "pool_url": self.services["pool"].url,
                "factory_url": self.services["factory"].url,
                "frontend_url": self.services["frontend"].url,
                **self.tls_settings(client=True),
            },
        )

    def _spawn(self, name: str) -> None:
        port = self.kept_port(name)
        if port and not _port_free(port):
            raise LaunchError(
                f"the {name}'s port {port} (kept in {self.path('config', f'{name}.yaml')} "
                "from an earlier start) is in use: stop what holds it, or set "
                "listen_port: 0 there to take a new one"
            )
        url_file = self.path("run", f"{name}.url")
        url_file.unlink(missing_ok=True)
        log = self.path("logs", f"{name}.log")
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "glidewms",
                    name,
                    "--config",
                    str(self.path("config", f"{name}.yaml")),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.services[name] = Running(name, process, "", log)

    def _await_url(self, name: str, timeout: float) -> None:
        running = self.services[name]
        url_file = self.path("run", f"{name}.url")
        deadline = time.monotonic() + timeout
        while not url_file.is_file():
            if running.process.poll() is not None:
                raise LaunchError(
                    f"the {name} exited with code {running.process.returncode}; "
                    f"its log ({running.log}) ends with:\n{tail(running.log)}"
                )
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"the {name} did not start within {timeout:.0f} s; see {running.log}"
                )
            time.sleep(0.05)
        running.url = url_file.read_text().strip()
        self._keep_port(name)

    def check_alive(self) -> None:
        for running in self.services.values():
            if running.process.poll() is not None:
                raise LaunchError(
                    f"the {running.name} stopped (exit code {running.process.returncode}); "
                    f"its log ({running.log}) ends with:\n{tail(running.log)}"
                )

    def restart_dead(self, timeout: float = 60.0) -> list[str]:
        """Start again, in place, every service that died; the names restarted.

        LaunchError when one died more than MAX_RESTARTS times in
        RESTART_WINDOW seconds (a fault to show, with its log), or does not
        come back within `timeout`.
        """
        restarted = []
        for name, running in list(self.services.items()):
            if running.process.poll() is None:
                continue
            now = time.monotonic()
            if not may_restart(running.restarts, now):
                raise LaunchError(
                    f"the {name} stopped {MAX_RESTARTS} times in {RESTART_WINDOW:.0f} s "
                    f"(last exit code {running.process.returncode}); its log "
                    f"({running.log}) ends with:\n{tail(running.log)}"
                )
            history = [t for t in running.restarts if now - t < RESTART_WINDOW] + [now]
            self._spawn(name)
            self.services[name].restarts = history
            self._await_url(name, timeout)
            restarted.append(name)
        return restarted

    def stop(self, timeout: float = 15.0) -> None:
        """Frontend first (no new requests), then the factory, then the pilots it
        started here (while the pool is up to take their jobs back), then the pool."""
        for name in reversed(SERVICES):
            if name == "pool":
                self.stop_local_pilots(timeout)
            running = self.services.get(name)
            if running is None or running.process.poll() is not None:
                continue
            running.process.send_signal(signal.SIGTERM)
            try:
                running.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(running.process.pid, signal.SIGKILL)
                running.process.wait(5)

    def stop_local_pilots(self, grace: float = 15.0) -> int:
        """SIGTERM the local-backend pilots of this installation's factory (they
        drain: running jobs go back to the queue), SIGKILL any left after `grace`.

        A site's pilots outlive a factory; these share the machine with the
        installation and would otherwise wait for their idle timeout against a
        pool that is gone. Returns how many were signalled.
        """
        db = self.path("factory", "factory.db")
        if not db.is_file():
            return 0
        groups = [pid for pid in _local_pilot_pids(db) if _signal_group(pid, signal.SIGTERM)]
        deadline = time.monotonic() + grace
        while any(_alive(pid) for pid in groups) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in groups:
            _signal_group(pid, signal.SIGKILL)
        return len(groups)

    def token_file(self, who: str) -> Path:
        return self.path("tokens", f"{who}.token")


def _local_pilot_pids(db: Path) -> list[int]:
    """Process ids of the factory's active local pilots that are still those
    processes (the start time in the backend id guards against pid reuse)."""
    engine = make_engine(sqlite_url(db))
    try:
        glideins = FactoryStore(engine).active()
    finally:
        engine.dispose()
    pids = []
    for glidein in glideins:
        try:
            local = LocalId.parse(glidein.backend_id or "")
        except ValueError:
            continue  # another backend's pilot: not a process of this machine
        stat = read_proc_stat(local.pid)
        if stat is not None and stat[1] == local.starttime:
            pids.append(local.pid)
    return pids


def _signal_group(pid: int, signum: int) -> bool:
    try:
        os.killpg(pid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is gone as far as the machine is concerned
    stat = read_proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def pool_settings(options: Options) -> dict[str, Any]:
    """The pool's extra settings, with `QDate` made significant when a frontend
    group overflows: its pilots' Start reads the job's QDate (observe.py
    `pilot_start_expr`), and the pool matches on autocluster ads, which hold
    only significant attributes: without it no job would ever overflow."""
    settings = dict(options.extra_pool)
    groups = options.extra_frontend.get("groups") or options.frontend_groups or []
    if any(g.get("overflow") for g in groups):
        significant = list(
            settings.get("significant_attributes") or PoolConfig().significant_attributes
        )
        if "qdate" not in {name.lower() for name in significant}:
            settings["significant_attributes"] = [*significant, "QDate"]
    return settings


def _port_free(port: int) -> bool:
    """Can a service bind this loopback port now? (SO_REUSEADDR, as uvicorn
    binds: a port in TIME_WAIT after a crash is free.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
