"""Property-based fuzzing of each service's OpenAPI with schemathesis.

Every operation of the pool, the factory and the frontend, built in-process on
real SQLite state and real keys, is called with generated requests (valid and
invalid ones) twice: with a token of the scope the route requires (read from
the route's own `Require` dependency, so the fuzzer reaches past the gate and
the scope check into the handler), and with none. Each response must not be a
5xx, must have a documented status code and content type, and its body must
match the declared schema. The seed is fixed (`derandomize`) and the budget
small enough for CI; a failure names the operation and the request that broke
it, which is the regression test to add next to the route's own tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode
from schemathesis.python import asgi as schemathesis_asgi

from glidewms.config.factory import EntryConfig, FactoryConfig
from glidewms.config.frontend import FrontendConfig
from glidewms.config.pool import PoolConfig
from glidewms.factory.api import create_app as factory_app
from glidewms.frontend.api import create_app as frontend_app
from glidewms.pool.api import create_app as pool_app
from glidewms.security.tokens import TokenIssuer, generate_keypair

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]
# CI-sized: the whole file in well under three minutes on two cores.
BUDGET = settings(
    max_examples=20,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
NO_TOKEN_BUDGET = settings(BUDGET, max_examples=5)

# The claims each scope's token carries: a pilot's binds it to a frontend and group.
CLAIMS: dict[str, dict[str, str]] = {"pilot": {"fe": "fe1", "group": "main"}}
SUBJECTS = {
    "user": "alice",
    "pilot": "pilot",
    "frontend": "fe1",
    "admin": "root",
    "metrics": "prometheus",
}


class Service:
    """An app under fuzzing and a bearer token for each operation's scope."""

    def __init__(self, app: FastAPI, issuer: TokenIssuer) -> None:
        self.app = app
        self.schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        tokens = {
            scope: issuer.issue(subject, [scope], 3600, **CLAIMS.get(scope, {}))
            for scope, subject in SUBJECTS.items()
        }
        self.headers: dict[tuple[str, str], dict[str, str]] = {}
        probe = TestClient(app)  # no lifespan: the scope check answers first
        outsider = {"Authorization": f"Bearer {issuer.issue('probe', [], 3600)}"}
        for result in self.schema.get_all_operations():
            operation = result.ok()
            scope = required_scope(probe, operation.method, operation.path, outsider)
            auth = {} if scope is None else {"Authorization": f"Bearer {tokens[scope]}"}
            self.headers[(operation.method.upper(), operation.path)] = auth

    def auth(self, method: str, path: str) -> dict[str, str]:
        return self.headers[(method.upper(), path)]


def required_scope(
    client: TestClient, method: str, path: str, outsider: dict[str, str]
) -> str | None:
    """The first scope the operation asks for, as its refusal of a token of an
    unknown scope names it (None: the operation takes any valid token)."""
    concrete = re.sub(r"\{[^}]+\}", "x", path)
    response = client.request(method.upper(), concrete, headers=outsider)
    found = re.search(r"one of ([a-z]+)", response.text) if response.status_code == 403 else None
    return found.group(1) if found else None


def keys(tmp: Path) -> tuple[TokenIssuer, Path]:
    private, public = generate_keypair(tmp / "keys")
    return TokenIssuer.from_file(private), public


def built(make: Callable[[Path, Path], FastAPI], tmp: Path) -> Iterator[Service]:
    issuer, public = keys(tmp)
    yield Service(make(tmp, public), issuer)
    # schemathesis started the app's lifespan on first call; end it with the state
    schemathesis_asgi.shutdown_lifespans()


def make_pool(tmp: Path, public: Path) -> FastAPI:
    pilot_private, pilot_public = generate_keypair(tmp / "keys", "pilot_issuer")
    config = PoolConfig(
        state_dir=tmp / "pool",
        issuer_public_key=public,
        pilot_issuer_public_key=pilot_public,
        pilot_issuer_private_key=pilot_private,
    )
    return pool_app(config, "http://testserver")


def make_factory(tmp: Path, public: Path) -> FastAPI:
    # A stand-in bootstrap that exits at once: a fuzzed request that does reach
    # the entry starts nothing that outlives the test.
    bootstrap = tmp / "glidein_startup.sh"
    bootstrap.write_text("#!/bin/sh\nexit 0\n")
    bootstrap.chmod(0o755)
    agent = tmp / "agent"
    agent.mkdir()
    (agent / "__main__.py").write_text("print('agent')\n")
    config = FactoryConfig(
        state_dir=tmp / "factory",
        issuer_public_key=public,
        cycle_seconds=3600,
        entries=[EntryConfig(name="local", site="LOCAL", max_pilots=1, max_per_cycle=1)],
    )
    return factory_app(config, "http://testserver", bootstrap=bootstrap, agent_dir=agent)


def make_frontend(tmp: Path, public: Path) -> FastAPI:
    config = FrontendConfig(state_dir=tmp / "frontend", issuer_public_key=public)
    return frontend_app(config, "token", loop=False)


SERVICES = {"pool": make_pool, "factory": make_factory, "frontend": make_frontend}


@pytest.mark.parametrize("with_token", [True, False], ids=["with-token", "without-token"])
@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_operation_holds_to_its_schema(name: str, with_token: bool, tmp_path: Path) -> None:
    """Every operation, with positive and negative examples; every failure is
    collected, so one run names them all."""
    failures: list[str] = []
    for service in built(SERVICES[name], tmp_path):
        budget = BUDGET if with_token else NO_TOKEN_BUDGET
        for result in service.schema.get_all_operations():
            operation = result.ok()
            failures.extend(fuzz(operation, service, with_token, budget))
    assert not failures, "\n\n".join(failures)


def fuzz(operation: Any, service: Service, with_token: bool, budget: settings) -> list[str]:
    """One operation under the budget; its failure (shrunk), if any."""
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @budget
    @given(case=strategy)
    def run(case: Any) -> None:
        headers = service.auth(case.method, case.path) if with_token else {}
        case.call_and_validate(headers=headers, checks=CHECKS)

    try:
        run()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a FailureGroup of the checks, or an error of the call
        return [f"{operation.label}: {exc}"]
    return []


def test_a_downtime_id_beyond_sqlite_integers_is_refused_not_a_500(tmp_path: Path) -> None:
    """Found by the fuzzer: a 2**70 id reached SQLite and the factory answered 500."""
    issuer, public = keys(tmp_path)
    admin = {"Authorization": f"Bearer {issuer.issue('root', ['admin'], 600)}"}
    with TestClient(make_factory(tmp_path, public)) as client:
        response = client.delete(f"/api/v1/downtimes/{2**70}", headers=admin)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["path", "downtime_id"]
        assert client.delete("/api/v1/downtimes/7", headers=admin).status_code == 404
