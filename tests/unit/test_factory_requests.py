"""A request's tokens and VO stage: what is checked, what is stored, what pilots are told,
and renewed tokens pushed to the copies pilots of another account read."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest
from fastapi import HTTPException

from glidewms.config.factory import EntryConfig
from glidewms.factory.backends import BackendContext, LocalBackend
from glidewms.factory.backends.slurm import SlurmBackend
from glidewms.factory.pilot_args import pilot_arguments
from glidewms.factory.requests import RequestBody, accept_request, token_file
from glidewms.factory.stage import Stage
from glidewms.factory.store import Glidein, StoredRequest
from glidewms.factory.token_push import TokenPush
from glidewms.security.tokens import TokenIssuer, TokenVerifier, generate_keypair

VO = {
    "url": "http://fe.example:9630/stage/vo/main",
    "manifest_sha256": "ab" * 32,
    "manifest_key": "MCowBQYDK2VwAyEA" + "A" * 43 + "=",
}


@pytest.fixture
def keys(tmp_path: Path) -> tuple[TokenIssuer, TokenVerifier]:
    private, public = generate_keypair(tmp_path / "keys")
    return TokenIssuer.from_file(private), TokenVerifier.from_file(public)


def pilot(issuer: TokenIssuer, **claims: Any) -> str:
    return issuer.issue("pilot", ["pilot"], 600, **{"fe": "fe1", "group": "main", **claims})


def body(top: str | None, **entries: dict[str, Any]) -> RequestBody:
    data: dict[str, Any] = {
        "pool_url": "http://pool:1",
        "entries": {name: {"idle": 1, "max_running": 2, **e} for name, e in entries.items()},
    }
    if top is not None:
        data["pilot_token"] = top
    return RequestBody.model_validate(data)


def test_entry_tokens_go_to_their_own_0600_files_and_never_into_the_stored_request(
    keys: tuple[TokenIssuer, TokenVerifier], tmp_path: Path
) -> None:
    issuer, verifier = keys
    group, own = pilot(issuer), pilot(issuer, entry="a")
    accepted = accept_request(
        verifier, body(group, a={"pilot_token": own}, b={}), "fe1", "main", tmp_path / "cred"
    )
    a_file = token_file(tmp_path / "cred", "fe1", "main", "a")
    assert a_file == tmp_path / "cred" / "fe1" / "main+a.token"
    assert a_file.read_text().strip() == own
    assert (tmp_path / "cred" / "fe1" / "main.token").read_text().strip() == group
    for f in (a_file, tmp_path / "cred" / "fe1" / "main.token"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert "pilot_token" not in repr(accepted.entries) and own not in repr(accepted)
    assert set(accepted.entry_tokens) == {"a"} and accepted.token_expires is not None
    assert own not in repr(body(group, a={"pilot_token": own}))


@pytest.mark.parametrize(
    ("top", "entry_claims", "message"),
    [
        ("group", {"entry": "b"}, "entries.a.pilot_token: its entry claim 'b' is not 'a'"),
        ("group", {"fe": "fe2"}, "entries.a.pilot_token: its fe claim is not 'fe1'"),
        ("group", {"group": "gpu"}, "entries.a.pilot_token: its group claim is not 'main'"),
        (None, None, "entries.a.pilot_token: required when the request has no pilot_token"),
        ("scoped-to-b", None, "pilot_token (for entry a): its entry claim 'b' is not 'a'"),
    ],
)
def test_a_bad_token_is_refused_naming_the_field_and_nothing_is_written(
    keys: tuple[TokenIssuer, TokenVerifier],
    tmp_path: Path,
    top: str | None,
    entry_claims: dict[str, str] | None,
    message: str,
) -> None:
    issuer, verifier = keys
    top_token = {"group": pilot(issuer), "scoped-to-b": pilot(issuer, entry="b"), None: None}[top]
    a = {} if entry_claims is None else {"pilot_token": pilot(issuer, **entry_claims)}
    with pytest.raises(HTTPException) as caught:
        accept_request(verifier, body(top_token, a=a), "fe1", "main", tmp_path / "cred")
    assert caught.value.status_code == 422
    assert caught.value.detail == message
    assert not (tmp_path / "cred").exists()


def test_only_entry_tokens_without_a_group_token(
    keys: tuple[TokenIssuer, TokenVerifier], tmp_path: Path
) -> None:
    issuer, verifier = keys
    accepted = accept_request(
        verifier,
        body(None, a={"pilot_token": pilot(issuer, entry="a")}),
        "fe1",
        "main",
        tmp_path / "cred",
    )
    assert accepted.token_expires is None and set(accepted.entry_tokens) == {"a"}
    assert not (tmp_path / "cred" / "fe1" / "main.token").exists()


@pytest.mark.parametrize(
    ("vo", "problem"),
    [
        ({**VO, "url": "ftp://x/y"}, "url"),
        ({**VO, "url": "http://x/a b"}, "url"),
        ({**VO, "manifest_sha256": "ab" * 31}, "manifest_sha256"),
        ({**VO, "manifest_key": "not base64!"}, "manifest_key"),
        ({**VO, "extra": 1}, "extra"),
    ],
)
def test_a_bad_vo_stage_is_refused(vo: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        RequestBody.model_validate(
            {"pool_url": "http://pool:1", "pilot_token": "t", "vo_stage": vo}
        )


def request(vo: dict[str, str] | None, **wanted: Any) -> StoredRequest:
    return StoredRequest(
        "fe1", "main", "http://pool:1", {"e": {"idle": 1, **wanted}}, None, 0.0, {}, vo
    )


def option(args: tuple[str, ...], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


@pytest.mark.parametrize(
    ("vo", "wanted", "expected"),
    [
        (None, {}, {"--vo-stage": None, "--vo-manifest-sha256": None, "--vo-manifest-key": None}),
        (
            VO,
            {},
            {
                "--vo-stage": VO["url"],
                "--vo-manifest-sha256": VO["manifest_sha256"],
                "--vo-manifest-key": VO["manifest_key"],
            },
        ),
        (
            {k: v for k, v in VO.items() if k != "manifest_key"},
            {},
            {"--vo-stage": VO["url"], "--vo-manifest-key": None},
        ),
        (None, {"start_expr": "true"}, {"--attr": "GLIDEIN_Start=true"}),
        (
            None,
            {},
            {
                "--manifest-key": "KEY",
                "--manifest-sha256": "f" * 64,
                "--entry": "e",
                "--glidein-id": "g-1",
                "--pool": "http://pool:1",
            },
        ),
    ],
)
def test_pilot_arguments(
    vo: dict[str, str] | None, wanted: dict[str, Any], expected: dict[str, str | None]
) -> None:
    stage = Stage(root=Path("/s"), files={}, manifest_sha256="f" * 64, public_key_b64="KEY")
    args = pilot_arguments(
        EntryConfig(name="e", site="S"), request(vo, **wanted), "g-1", "http://factory:1", stage
    )
    for name, value in expected.items():
        assert option(args, name) == value, name


@pytest.mark.parametrize(
    ("site", "frontend", "expected"),
    [
        (None, None, []),
        (None, 'TARGET.Owner == "alice"', ['GLIDEIN_Start=TARGET.Owner == "alice"']),
        ("TARGET.RequestMemory < 4000", None, ["GLIDEIN_Start=TARGET.RequestMemory < 4000"]),
        (
            "TARGET.RequestMemory < 4000",
            'TARGET.Owner == "alice"',
            ['GLIDEIN_Start=(TARGET.RequestMemory < 4000) && (TARGET.Owner == "alice")'],
        ),
        (False, "true", ["GLIDEIN_Start=(false) && (true)"]),  # a closed site stays closed
    ],
)
def test_an_entrys_start_is_anded_with_the_frontends_never_replaced(
    site: str | bool | None, frontend: str | None, expected: list[str]
) -> None:
    stage = Stage(root=Path("/s"), files={}, manifest_sha256="f" * 64, public_key_b64="KEY")
    attributes: dict[str, Any] = {"GLIDEIN_Other": 1}
    if site is not None:
        attributes["GLIDEIN_START" if site is False else "GLIDEIN_Start"] = site
    wanted = {"start_expr": frontend} if frontend else {}
    args = pilot_arguments(
        EntryConfig(name="e", site="S", attributes=attributes),
        request(None, **wanted),
        "g-1",
        "http://factory:1",
        stage,
    )
    attrs = [args[i + 1] for i, a in enumerate(args) if a == "--attr"]
    starts = [a for a in attrs if a.lower().startswith("glidein_start=")]
    assert [s.replace("GLIDEIN_START=", "GLIDEIN_Start=") for s in starts] == expected
    assert "GLIDEIN_Other=1" in attrs


def glidein(entry: str, group: str = "main") -> Glidein:
    return Glidein.submitted(f"{entry}-x-1", entry, "slurm", "fe1", group, 0.0)


def test_renewed_tokens_are_pushed_to_the_copies_of_another_account(tmp_path: Path) -> None:
    """A real prefixed LocalShell (`env` as the prefix: same account, a separate process)
    writes the copy; the push happens when the factory's file changed and only then."""
    log_dir = tmp_path / "batch"
    prefixed = EntryConfig(
        name="p",
        site="S",
        backend="slurm",
        batch={"command_prefix": ["env"], "log_dir": str(log_dir)},
    )
    plain = EntryConfig(name="q", site="S", backend="slurm")
    entries = {"p": prefixed, "q": plain}
    backend = SlurmBackend(BackendContext(tmp_path / "state", tmp_path / "boot", entries=entries))
    cred = tmp_path / "cred"
    own = token_file(cred, "fe1", "main", "p")
    own.parent.mkdir(parents=True)
    own.write_text("first")
    push = TokenPush()

    def files(fe: str, group: str, entry: str) -> list[Path]:
        return [token_file(cred, fe, group), token_file(cred, fe, group, entry)]

    async def run() -> int:
        return await push.push([glidein("p"), glidein("q")], entries.get, {"slurm": backend}, files)

    copy = log_dir / "tokens" / "fe1.main+p.token"
    assert asyncio.run(run()) == 1  # the group file does not exist; q reads the factory's own
    assert copy.read_text() == "first" and stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert asyncio.run(run()) == 0  # unchanged: nothing written
    tmp = own.with_name("new")
    tmp.write_text("second")
    tmp.replace(own)  # as write_token renews it
    assert asyncio.run(run()) == 1
    assert copy.read_text() == "second"
    assert not (tmp_path / "state" / "batch" / "q" / "tokens").exists()


def test_local_pilots_read_the_factorys_file_so_nothing_is_pushed(tmp_path: Path) -> None:
    backend = LocalBackend(BackendContext(tmp_path, tmp_path / "boot"))
    assert not backend.stages_token(EntryConfig(name="l", site="S"))


def test_a_version_3_database_gains_the_request_columns(tmp_path: Path) -> None:
    """An existing factory database (schema 3) is migrated: old requests read back with
    no entry tokens and no VO stage; new ones keep both."""
    import sqlalchemy as sa

    from glidewms.db import make_engine, migrate, sqlite_url
    from glidewms.factory import store as store_module

    engine = make_engine(sqlite_url(tmp_path / "f.db"))
    with engine.begin() as conn:  # the requests table as version 3 made it
        conn.execute(
            sa.text(
                'CREATE TABLE requests (frontend VARCHAR(64), "group" VARCHAR(64), '
                "pool_url TEXT, entries JSON, token_expires FLOAT, "
                'updated_at FLOAT, PRIMARY KEY (frontend, "group"))'
            )
        )
        conn.execute(
            sa.text("INSERT INTO requests VALUES ('fe1', 'main', 'http://p', '{}', NULL, 1.0)")
        )
    migrate(engine, "factory", store_module.MIGRATIONS[:3])
    store = store_module.FactoryStore(engine)
    [old] = store.requests()
    assert old.entry_tokens is None and old.vo_stage is None and old.token_expiry("e") is None
    store.put_request("fe1", "main", "http://p", {"e": {"idle": 1}}, 5.0, {"e": 9.0}, VO)
    [new] = store.requests()
    assert new.vo_stage == VO and new.token_expiry("e") == 9.0 and new.token_expiry("f") == 5.0
