"""What the factory integration tests share: the stand-in bootstrap, the keys,
bootstrap and agent a factory app is built from, a frontend's calls to that app,
and the deadline polls (blocking, and over a backend's async status)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from glidewms.config.factory import EntryConfig, FactoryConfig
from glidewms.factory.api import create_app
from glidewms.factory.backends import Backend, PilotState, PilotSubmission
from glidewms.security.tokens import TokenIssuer, generate_keypair
from tests import harness

FACTORY_URL = "http://127.0.0.1:9999"
POOL_URL = "http://127.0.0.1:9998"

# Integration waits: a minute, polled every 0.1 s.
wait_for = partial(harness.wait_for, timeout=60.0, interval=0.1)

Seen = dict[str, PilotState]


def stand_in(note: str, says: str, *, check_leaks: bool = True, poll: float = 0.1) -> str:
    """A stand-in for glidein_startup.sh: records its argv in @OUT@/<glidein id>.args,
    checks that GLIDEIN_TOKEN_FILE names a 0600 file (and, with `check_leaks`, that the
    token is neither in argv nor in the environment), echoes `says`, then waits for
    @OUT@/release. `note` ends the script's first comment line."""
    leaks = r"""token=$(cat "$GLIDEIN_TOKEN_FILE")
for a in "${args[@]}"; do case "$a" in *"$token"*) echo "token in argv" >&2; exit 4 ;; esac; done
env | grep -qF "$token" && { echo "token in environment" >&2; exit 5; }
"""
    return (
        r"""#!/bin/bash
# Stand-in for glidein_startup.sh"""
        + note
        + r"""
out=@OUT@
args=("$@")
gid=unknown
while [ $# -gt 0 ]; do
  case "$1" in --glidein-id) gid="$2"; shift 2 ;; *) shift ;; esac
done
printf '%s\n' "${args[@]}" > "$out/$gid.args.tmp" && mv "$out/$gid.args.tmp" "$out/$gid.args"
[ -r "${GLIDEIN_TOKEN_FILE:-/nonexistent}" ] || { echo "no token file" >&2; exit 2; }
[ "$(stat -c %a "$GLIDEIN_TOKEN_FILE")" = 600 ] || { echo "token file not 0600" >&2; exit 3; }
"""
        + (leaks if check_leaks else "")
        + says
        + f"""
while [ ! -e "$out/release" ]; do sleep {poll}; done
exit 0
"""
    )


@dataclass
class FactoryFiles:
    """The real keys, the stand-in bootstrap and a one-file agent of a factory app."""

    tmp: Path
    issuer: TokenIssuer
    public: Path
    bootstrap: Path
    agent: Path

    @classmethod
    def create(cls, tmp: Path, script: str, out: Path) -> FactoryFiles:
        """Keys under tmp/keys, `script` (its @OUT@ made `out`) as the bootstrap."""
        private, public = generate_keypair(tmp / "keys")
        bootstrap = tmp / "glidein_startup.sh"
        bootstrap.write_text(script.replace("@OUT@", str(out)))
        agent = tmp / "agent"
        agent.mkdir()
        (agent / "__main__.py").write_text("print('agent')\n")
        return cls(tmp, TokenIssuer.from_file(private), public, bootstrap, agent)

    def config(self, entry: EntryConfig, cycle_seconds: float) -> FactoryConfig:
        return FactoryConfig(
            state_dir=self.tmp / "state",
            issuer_public_key=self.public,
            cycle_seconds=cycle_seconds,
            entries=[entry],
        )

    def app(self, config: FactoryConfig) -> Any:
        return create_app(config, FACTORY_URL, bootstrap=self.bootstrap, agent_dir=self.agent)

    def headers(self, subject: str, scopes: list[str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.issuer.issue(subject, scopes, 600)}"}

    def pilot_token(self, fe: str = "fe1") -> str:
        return self.issuer.issue("pilot", ["pilot"], 600, fe=fe, group="main")


class Frontend:
    """A frontend's calls to a factory app: its group `main` asks one entry for pilots."""

    def __init__(
        self, client: TestClient, entry: str, headers: dict[str, str], pilot_token: str
    ) -> None:
        self.client, self.entry = client, entry
        self.headers, self.pilot_token = headers, pilot_token

    def put(self, idle: int, max_running: int, remove: str) -> None:
        body = {
            "pool_url": POOL_URL,
            "pilot_token": self.pilot_token,
            "entries": {self.entry: {"idle": idle, "max_running": max_running, "remove": remove}},
        }
        response = self.client.put("/api/v1/requests/main", json=body, headers=self.headers)
        assert response.status_code == 200

    def glideins(self) -> list[dict[str, Any]]:
        return self.client.get("/api/v1/glideins", headers=self.headers).json()

    def states(self) -> list[str]:
        return sorted(g["state"] for g in self.glideins())


# -- a backend alone ---------------------------------------------------------------------


def token_file(path: Path) -> Path:
    """A 0600 pilot token file at `path` (its directory made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("secret\n")
    path.chmod(0o600)
    return path


def submissions(token: Path, n: int = 3) -> list[PilotSubmission]:
    """Pilots g-0 .. g-<n-1> with the glidein id as their 4th argument."""
    return [
        PilotSubmission(f"g-{i}", ("--x", "y", "--glidein-id", f"g-{i}"), token) for i in range(n)
    ]


async def until(
    backend: Backend, ids: list[str], done: Callable[[Seen], bool], deadline: float, interval: float
) -> Seen:
    """Poll `backend.status(ids)` until `done` holds; fail at `deadline` (monotonic)."""
    while True:
        seen = await backend.status(ids)
        if done(seen):
            return seen
        assert time.monotonic() < deadline, f"states: {seen}"
        await asyncio.sleep(interval)
