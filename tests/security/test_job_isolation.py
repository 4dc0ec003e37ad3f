"""Jobs cannot read the services' secrets: the attack of issue 11, replayed.

On `glidewms up` a job ran as the services' account: it read its pilot's token
file and `keys/issuer.key`, minted an admin token and used it. Here a job is
submitted to a real installation (`tests.harness.systems`: pool, factory and
frontend as processes, pilots from the local backend running the real
bootstrap and agent) and tries to read the issuer key, the installation's
tokens, its pilot's token file (found from its pilot's glidein_config where
it can read that) and `/proc/<pid>/environ` of every pilot agent it can see;
it writes what it could read to its output. It must have read none, while a
control file (`/etc/hostname`) proves the probe reads what it may.

Both ways of isolating are run: `account` (the default here, the tests run as
root: jobs run as `nobody`) and `sandbox` (bubblewrap; as root it also drops
its capabilities). Then the refusal when neither can be had, and the pure
decision table (what a non-root factory without bubblewrap does cannot be
made on this root machine by a real process).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from glidewms.config.factory import EntryConfig
from glidewms.config.sites import JobIsolationConfig
from glidewms.factory.backends import BackendContext
from glidewms.factory.backends import isolation as factory_isolation
from glidewms.factory.backends.isolation import Choice, IsolationUnavailable, choose
from glidewms.factory.backends.local import LocalBackend
from glidewms.launcher import LaunchError
from tests.harness import System, systems, wait_for

pytestmark = pytest.mark.e2e

PROBE = r"""#!/bin/bash
# What a hostile job tries: read every secret it is given or can find.
probe() { if head -c 64 -- "$1" > /dev/null 2>&1; then echo "READ $1"; else echo "DENIED $1"; fi; }
for path in "$@"; do probe "$path"; done
for cfg in ../../glidein_config ../../../glidein_config; do
  if [ -r "$cfg" ]; then
    echo "CONFIG $cfg"
    token=$(awk '$1 == "GLIDEIN_Token_File" { print $2 }' "$cfg")
    [ -z "$token" ] || probe "$token"
  fi
done
seen=0
for dir in /proc/[0-9]*; do
  case "$(tr '\0' ' ' < "$dir/cmdline" 2> /dev/null)" in
    *"-m agent"*) seen=$((seen + 1)); probe "$dir/environ" ;;
  esac
done
echo "AGENTS_SEEN $seen"
if echo x >> "$1" 2> /dev/null; then echo "WROTE $1"; fi
probe /etc/hostname
echo "UID $(id -u)"
"""


@pytest.fixture
def system(tmp_path: Path) -> Iterator[Callable[..., System]]:
    with systems(tmp_path, http_timeout=30) as start:
        yield start


def local_entry(**extra: Any) -> dict[str, Any]:
    return {
        "name": "local",
        "site": "LOCAL",
        "backend": "local",
        "cpus": 1,
        "memory": "auto",
        "disk": "auto",
        "walltime": 3600,
        "max_pilots": 1,
        "max_idle": 1,
        "max_per_cycle": 1,
        **extra,
    }


def run_probe(s: System, tmp_path: Path) -> tuple[str, list[Path]]:
    """Submit the probe with the installation's secrets as arguments; its output, and
    the secrets (each of which exists: the probe's DENIED is not a missing file)."""
    root = s.inst.root
    secrets = [
        root / "keys" / "issuer.key",
        root / "tokens" / "admin.token",
        root / "tokens" / "frontend.token",
        root / "config" / "factory.yaml",
    ]
    (tmp_path / "probe.sh").write_text(PROBE)
    (tmp_path / "probe.sh").chmod(0o755)
    # the pilot token files exist once the frontend asked for pilots, before any pilot
    tokens = wait_for(
        lambda: sorted((root / "factory" / "credentials").rglob("*.token")),
        "the frontend's pilot tokens at the factory",
    )
    secrets += tokens
    [jid] = s.submit(
        f"executable = probe.sh\narguments = {' '.join(map(str, secrets))}\n"
        "output = probe.out\nrequest_memory = 32\nqueue\n",
        tmp_path,
    )
    job = wait_for(lambda: (j := s.job(jid))["state"] == "completed" and j, "the probe job")
    assert job["exit_code"] == 0
    [out] = [p for p in s.pool.fetch_outputs(jid, tmp_path / "got") if p.name == "probe.out"]
    for secret in secrets:
        assert secret.is_file() and secret.stat().st_size > 0, secret
    return out.read_text(), secrets


def pilot_log(s: System) -> str:
    logs = s.inst.root / "factory" / "logs" / "local"
    return "".join(p.read_text() for p in logs.glob("*.err"))


def test_a_job_as_another_account_reads_no_secret(
    system: Callable[..., System], tmp_path: Path
) -> None:
    assert os.geteuid() == 0, "the account mode needs the tests to run as root"
    s = system()  # mode auto: root, so jobs run as nobody
    output, secrets = run_probe(s, tmp_path)
    assert "READ /etc/hostname" in output, output  # the probe itself works
    assert f"UID {65534}" in output
    for secret in secrets:
        assert f"DENIED {secret}" in output, output
    assert "CONFIG" in output and output.count("DENIED") >= len(secrets) + 1  # its token too
    seen = int(output.split("AGENTS_SEEN ")[1].split()[0])
    assert seen >= 1, output  # it saw its pilot's agent (and was denied its environment)
    assert output.count("/environ") == seen
    assert not [line for line in output.splitlines() if line.startswith(("READ /proc", "WROTE"))]
    assert "jobs run as account nobody" in pilot_log(s)


def test_a_sandboxed_job_sees_no_secret_and_no_pilot(
    system: Callable[..., System], tmp_path: Path
) -> None:
    s = system(entries=[local_entry(isolation={"mode": "sandbox"})])
    output, secrets = run_probe(s, tmp_path)
    assert "READ /etc/hostname" in output, output
    assert f"UID {os.geteuid()}" in output  # its own account: the sandbox does the hiding
    for secret in secrets:
        assert f"DENIED {secret}" in output, output
    assert "CONFIG" not in output  # the pilot's work dir is hidden too
    assert "AGENTS_SEEN 0" in output  # its own pid namespace: no pilot, no service
    assert not [line for line in output.splitlines() if line.startswith(("READ /proc", "WROTE"))]
    log = pilot_log(s)
    assert "jobs run in a bubblewrap sandbox" in log and str(s.inst.root) in log


def test_the_installation_refuses_to_start_when_jobs_cannot_be_isolated(tmp_path: Path) -> None:
    entry = local_entry(isolation={"mode": "sandbox", "bwrap": "/nonexistent/bwrap"})
    with systems(tmp_path) as start, pytest.raises(LaunchError) as info:
        start(entries=[entry])
    message = str(info.value)
    assert "factory" in message and "bubblewrap" in message and "local" in message
    assert not list((tmp_path / "state" / "factory" / "logs").rglob("*.err"))  # no pilot


# -- the decision, as a table (a non-root factory cannot be made on this root machine) ----

BWRAP_MISSING = "'bwrap' not found"


@pytest.mark.parametrize(
    ("settings", "euid", "account", "bwrap", "expected"),
    [
        ({}, 0, True, None, "account"),
        ({}, 0, True, BWRAP_MISSING, "account"),
        ({}, 0, False, None, "sandbox"),  # root without the account: the sandbox
        ({}, 1000, True, None, "sandbox"),
        ({}, 1000, True, BWRAP_MISSING, IsolationUnavailable),  # neither: refused
        ({"allow_unisolated": True}, 1000, True, BWRAP_MISSING, "none"),
        ({"allow_unisolated": True}, 1000, True, None, "sandbox"),  # only when needed
        ({"mode": "account"}, 1000, True, None, IsolationUnavailable),
        ({"mode": "account"}, 0, False, None, IsolationUnavailable),
        ({"mode": "sandbox"}, 0, True, None, "sandbox"),
        ({"mode": "sandbox"}, 0, True, BWRAP_MISSING, IsolationUnavailable),
        ({"mode": "sandbox", "allow_unisolated": True}, 0, True, "x", IsolationUnavailable),
        ({"mode": "none"}, 0, True, None, "none"),
    ],
)
def test_the_isolation_decision(
    settings: dict[str, Any], euid: int, account: bool, bwrap: str | None, expected: Any
) -> None:
    config = JobIsolationConfig(**settings)
    if expected is IsolationUnavailable:
        with pytest.raises(IsolationUnavailable):
            choose(config, euid=euid, account_exists=account, bwrap_problem=bwrap)
    else:
        chosen = choose(config, euid=euid, account_exists=account, bwrap_problem=bwrap)
        assert chosen.mode == expected


def test_a_non_root_factory_without_bubblewrap_refuses_to_start_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(factory_isolation.os, "geteuid", lambda: 1000)
    entry = EntryConfig(name="local", site="LOCAL", isolation={"bwrap": "/nonexistent/bwrap"})
    context = BackendContext(
        state_dir=tmp_path, bootstrap=tmp_path / "boot.sh", entries={"local": entry}
    )
    with pytest.raises(IsolationUnavailable) as info:
        LocalBackend(context)
    message = str(info.value)
    assert "entry local" in message and "not run as root" in message
    assert "/nonexistent/bwrap" in message and "--allow-unisolated-jobs" in message
    allowed = entry.model_copy(
        update={"isolation": entry.isolation.model_copy(update={"allow_unisolated": True})}
    )
    backend = LocalBackend(
        BackendContext(state_dir=tmp_path, bootstrap=tmp_path / "b", entries={"local": allowed})
    )
    choice = backend.isolation(allowed)
    assert choice.mode == "none" and "NOT isolated" in choice.reason


def test_glidewms_up_hides_the_whole_installation_and_passes_the_choice(
    tmp_path: Path,
) -> None:
    entry: dict[str, Any] = {"name": "local", "site": "LOCAL"}
    factory_isolation.for_installation(entry, tmp_path / "inst", allow_unisolated=True)
    config = EntryConfig(**entry)
    assert config.isolation.hidden_paths == ["~", str(tmp_path / "inst")]
    assert config.isolation.allow_unisolated is True
    settings = factory_isolation.pilot_settings(Choice("sandbox", ""), config, tmp_path / "f")
    hidden = settings[settings.index("--set") + 1 :]
    assert f"GLIDEIN_Job_Hidden={tmp_path / 'f'},{os.path.expanduser('~')},{tmp_path / 'inst'}" in (
        hidden
    )
    ssh: dict[str, Any] = {"name": "remote", "site": "R", "backend": "slurm"}
    factory_isolation.for_installation(ssh, tmp_path, allow_unisolated=False)
    assert "isolation" not in ssh  # only local pilots share the services' machine
