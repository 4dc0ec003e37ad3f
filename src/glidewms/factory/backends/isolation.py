"""The local backend's side of job isolation: which mode its pilots get, and how.

Local pilots run on the services' own machine, as the factory's account:
their jobs would run as that account too, next to the issuer key, the
factory's credentials and the databases (issue 11: a job read
`keys/issuer.key` and minted an admin token). So the factory decides once,
at start, per local entry (`isolation:` in the entry, config/sites.py):

- as root, jobs run as an unprivileged account (`account`, default
  `nobody`), the agent staying root;
- otherwise each job runs in a bubblewrap sandbox that hides the factory's
  state dir, the `hidden_paths` (`glidewms up` adds its whole installation)
  and the pilot's own files, in a PID namespace of its own;
- when neither can be had, the factory refuses to start (`IsolationUnavailable`,
  a configuration error naming the entry and what is missing) unless the
  entry says `allow_unisolated` (`glidewms up --allow-unisolated-jobs`): then
  jobs run unisolated and the factory and every pilot say so in their logs.

`choose` is the pure decision (table-tested); the pilot learns its mode from
`--set GLIDEIN_Job_*` options (`pilot_settings`) and checks it again itself
(glidein/agent/isolation.py): a pilot never runs jobs less isolated than asked.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from glidewms.config.factory import EntryConfig
from glidewms.config.loader import ConfigError
from glidewms.config.sites import JobIsolationConfig

PROBE_TIMEOUT = 30.0


class IsolationUnavailable(ConfigError):
    """A local entry's jobs cannot be isolated as its configuration asks."""


@dataclass(frozen=True)
class Choice:
    """The mode a local entry's pilots get, and why (logged at factory start)."""

    mode: str  # account, sandbox or none
    reason: str


def choose(
    config: JobIsolationConfig,
    *,
    euid: int,
    account_exists: bool,
    bwrap_problem: str | None,
) -> Choice:
    """The isolation mode for `config` on this machine; IsolationUnavailable if none
    that the configuration accepts can be had (the message says what is missing)."""
    root_ok = euid == 0 and account_exists
    why_not_root = (
        f"the factory does not run as root (euid {euid})"
        if euid != 0
        else f"there is no account {config.account!r}"
    )
    sandbox = f"bubblewrap: {bwrap_problem}" if bwrap_problem else ""
    if config.mode == "account" or (config.mode == "auto" and root_ok):
        if root_ok:
            return Choice("account", f"jobs run as account {config.account}")
        raise IsolationUnavailable(f"mode account: {why_not_root}")
    if config.mode == "sandbox" or (config.mode == "auto" and not bwrap_problem):
        if not bwrap_problem:
            return Choice("sandbox", "jobs run in a bubblewrap sandbox")
        raise IsolationUnavailable(f"mode sandbox: {sandbox}")
    if config.mode == "none":
        return Choice("none", "mode none: jobs are NOT isolated from this machine's services")
    if config.allow_unisolated:
        return Choice(
            "none",
            f"jobs are NOT isolated from this machine's services ({why_not_root}; "
            f"{sandbox}), allowed by allow_unisolated",
        )
    raise IsolationUnavailable(
        f"the jobs of its pilots cannot be isolated from this machine's services: "
        f"{why_not_root}, and {sandbox}. Run the factory as root, install bubblewrap, "
        "or set isolation.allow_unisolated: true (glidewms up --allow-unisolated-jobs) "
        "to run them unisolated, able to read the factory's files"
    )


def bwrap_problem(command: str) -> str | None:
    """Why bubblewrap cannot make the sandboxes jobs run in here, or None."""
    path = shutil.which(command)
    if path is None:
        return f"{command!r} not found"
    probe = [path, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    probe += ["--unshare-pid", "--unshare-ipc", "--share-net", "--", "/bin/sh", "-c", "exit 0"]
    try:
        done = subprocess.run(
            probe, capture_output=True, stdin=subprocess.DEVNULL, timeout=PROBE_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{path} does not run: {exc}"
    if done.returncode != 0:
        return f"{path} fails: {done.stderr.decode(errors='replace').strip()[-300:]}"
    return None


def decide(entry: EntryConfig) -> Choice:
    """`choose` for `entry` on this machine (probing bubblewrap only when needed)."""
    config = entry.isolation
    euid = os.geteuid()
    try:
        pwd.getpwnam(config.account)
        account_exists = True
    except KeyError:
        account_exists = False
    needs_probe = config.mode == "sandbox" or (
        config.mode == "auto" and not (euid == 0 and account_exists)
    )
    problem = bwrap_problem(config.bwrap) if needs_probe else None
    try:
        return choose(config, euid=euid, account_exists=account_exists, bwrap_problem=problem)
    except IsolationUnavailable as exc:
        raise IsolationUnavailable(f"entry {entry.name}: {exc}") from None


def pilot_settings(choice: Choice, entry: EntryConfig, state_dir: Path) -> list[str]:
    """The bootstrap options that tell a pilot its mode (`GLIDEIN_Job_*` settings)."""
    settings = [f"GLIDEIN_Job_Isolation={choice.mode}"]
    if choice.mode == "account":
        settings.append(f"GLIDEIN_Job_Account={entry.isolation.account}")
    if choice.mode == "sandbox":
        hidden = [str(state_dir.resolve())]
        hidden += [os.path.expanduser(p) for p in entry.isolation.hidden_paths]
        settings.append(f"GLIDEIN_Job_Hidden={','.join(hidden)}")
        bwrap = shutil.which(entry.isolation.bwrap) or entry.isolation.bwrap
        settings.append(f"GLIDEIN_Job_Bwrap={bwrap}")
    return [word for setting in settings for word in ("--set", setting)]


def for_installation(entry: dict[str, object], root: Path, allow_unisolated: bool) -> None:
    """Make a local entry of a one-machine installation (`glidewms up`) hide the whole
    installation (keys, tokens, databases, logs) from its jobs in mode sandbox, and
    record whether unisolated jobs were allowed (`--allow-unisolated-jobs`)."""
    if entry.get("backend", "local") != "local":
        return
    isolation = dict(entry.get("isolation") or {})  # type: ignore[call-overload]
    hidden = isolation.get("hidden_paths", JobIsolationConfig().hidden_paths)
    isolation["hidden_paths"] = [*hidden, str(root)]
    if allow_unisolated:
        isolation["allow_unisolated"] = True
    entry["isolation"] = isolation
