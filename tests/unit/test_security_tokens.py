"""Token verification and its memory of verified tokens (real Ed25519 keys and
PyJWT): a remembered token skips the signature check, but never outlives its
`exp`, and nothing unverified is ever remembered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from glidewms.security import tokens
from glidewms.security.tokens import TokenError, TokenIssuer, TokenVerifier, generate_keypair


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys(tmp_path: Path) -> tuple[TokenIssuer, bytes]:
    private, public = generate_keypair(tmp_path / "keys")
    return TokenIssuer.from_file(private), public.read_bytes()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every full verification (header, signature, claims) the verifier makes."""
    seen: list[str] = []
    real = TokenVerifier._verify

    def counting(self: TokenVerifier, token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return real(self, token, *args, **kwargs)

    monkeypatch.setattr(tokens.TokenVerifier, "_verify", counting)
    return seen


def test_a_verified_token_is_remembered(keys, decodes) -> None:
    issuer, public = keys
    verifier = TokenVerifier(public)
    token = issuer.issue("pilot", ["pilot"], 600, fe="fe1", group="main")
    first, second = verifier.verify(token), verifier.verify(token)
    assert decodes == [token]  # the second call checked no signature
    assert first == second and second.subject == "pilot" and second.has("pilot")
    assert second.claims["fe"] == "fe1"


def test_a_remembered_token_that_expires_is_refused(keys, decodes) -> None:
    issuer, public = keys
    token = issuer.issue("pilot", ["pilot"], 600)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    decodes.clear()
    clock = Clock(exp - 1)
    verifier = TokenVerifier(public, clock=clock)
    verifier.verify(token)
    verifier.verify(token)
    assert len(decodes) == 1
    clock.now = exp  # expiry is exclusive, as PyJWT has it
    with pytest.raises(TokenError, match="expired"):
        verifier.verify(token)
    with pytest.raises(TokenError, match="expired"):  # and stays refused
        verifier.verify(token)


def test_a_token_expired_at_first_sight_is_refused(keys) -> None:
    issuer, public = keys
    with pytest.raises(TokenError, match="expired"):
        TokenVerifier(public).verify(issuer.issue("alice", ["user"], lifetime=-10))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-4] + ("AAAA" if not t.endswith("AAAA") else "BBBB"),  # signature
        lambda t: "x" + t,  # header
    ],
)
def test_a_bad_token_is_refused_every_time_and_never_remembered(keys, decodes, tamper) -> None:
    issuer, public = keys
    verifier = TokenVerifier(public)
    bad = tamper(issuer.issue("alice", ["user"], 600))
    for _ in range(2):
        with pytest.raises(TokenError):
            verifier.verify(bad)
    assert decodes == [bad, bad]


def test_a_token_of_another_issuer_key_is_refused(keys, tmp_path: Path) -> None:
    _, public = keys
    other_private, _ = generate_keypair(tmp_path / "other")
    forged = TokenIssuer.from_file(other_private).issue("admin", ["admin"], 600)
    with pytest.raises(TokenError):
        TokenVerifier(public).verify(forged)


def test_exp_must_be_a_number(keys, tmp_path: Path) -> None:
    issuer, public = keys
    token = jwt.encode(
        {"iss": "glidewms", "sub": "x", "exp": "soon"}, issuer._key, algorithm="EdDSA"
    )
    with pytest.raises(TokenError, match="exp"):
        TokenVerifier(public).verify(token)


def test_the_memory_is_bounded_least_recently_used_first_out(keys, decodes) -> None:
    issuer, public = keys
    verifier = TokenVerifier(public, cache_size=2)
    a, b, c = (issuer.issue(name, ["user"], 600) for name in "abc")
    verifier.verify(a)
    verifier.verify(b)
    verifier.verify(a)  # a is now the most recently used
    verifier.verify(c)  # b goes
    decodes.clear()
    verifier.verify(a)
    verifier.verify(c)
    assert decodes == []
    verifier.verify(b)
    assert decodes == [b]


def test_a_caller_cannot_change_what_the_next_caller_gets(keys) -> None:
    issuer, public = keys
    verifier = TokenVerifier(public)
    token = issuer.issue("pilot", ["pilot"], 600, entry="E1")
    verifier.verify(token).claims["entry"] = "elsewhere"
    assert verifier.verify(token).claims["entry"] == "E1"


def test_no_memory_with_cache_size_zero(keys, decodes) -> None:
    issuer, public = keys
    verifier = TokenVerifier(public, cache_size=0)
    token = issuer.issue("u", ["user"], 600)
    verifier.verify(token)
    verifier.verify(token)
    assert decodes == [token, token]


def test_a_key_that_cannot_sign_eddsa_is_refused_when_loaded() -> None:
    """Not at the first `issue`, hours later: `glidewms token` and the services
    report it when they read the key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="EdDSA"):
        TokenIssuer(private)
    with pytest.raises(ValueError, match="EdDSA"):
        TokenVerifier(public)


# ------------------------------------------------------------------ the pilot issuer


@pytest.fixture
def two_issuers(tmp_path: Path) -> tuple[TokenIssuer, TokenIssuer, TokenVerifier, Path]:
    """The installation's issuer, the pilot issuer, a verifier with both public
    keys, and the pilot issuer's private key file."""
    private, public = generate_keypair(tmp_path / "keys")
    pilot_private, pilot_public = generate_keypair(tmp_path / "keys", "pilot_issuer")
    return (
        TokenIssuer.from_file(private),
        TokenIssuer.from_file(pilot_private, tokens.PILOT_KID),
        TokenVerifier.from_file(public, pilot_public),
        pilot_private,
    )


def forge(key_file: Path, scope: str, headers: dict[str, Any] | None = None) -> str:
    """What someone holding `key_file` can sign, past TokenIssuer's own refusals."""
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    claims = {"iss": "glidewms", "sub": "mallory", "scope": scope, "exp": 4102444800}
    return jwt.encode(claims, key, algorithm="EdDSA", headers=headers)  # type: ignore[arg-type]


def test_the_pilot_issuer_signs_pilot_tokens_that_every_verifier_with_its_key_accepts(
    two_issuers,
) -> None:
    _, pilot_issuer, verifier, _ = two_issuers
    token = pilot_issuer.issue("pilot", ["pilot"], 600, fe="fe1", group="main", entry="E")
    assert jwt.get_unverified_header(token)["kid"] == "pilot"
    identity = verifier.verify(token)
    assert identity.is_pilot and identity.has("pilot") and identity.claims["entry"] == "E"


def test_the_pilot_issuer_cannot_sign_any_other_scope(two_issuers) -> None:
    _, pilot_issuer, verifier, pilot_key = two_issuers
    for scopes in (["admin"], ["user"], ["frontend"], ["pilot", "admin"]):
        with pytest.raises(ValueError, match="pilot scope only"):
            pilot_issuer.issue("x", scopes, 600)
    # and what its key signs outside TokenIssuer is refused by every verifier
    for scope in ("admin", "user", "frontend", "pilot admin", "pilot user", ""):
        with pytest.raises(TokenError, match="pilot scope only"):
            verifier.verify(forge(pilot_key, scope, {"kid": "pilot"}))
    # nor can its key pass for the installation's (no kid, or kid main)
    for headers in (None, {"kid": "main"}):
        with pytest.raises(TokenError, match=r"[Ss]ignature"):
            verifier.verify(forge(pilot_key, "admin", headers))
    with pytest.raises(TokenError, match="unknown issuer key id"):
        verifier.verify(forge(pilot_key, "pilot", {"kid": "other"}))


def test_without_the_pilot_public_key_pilot_issuer_tokens_are_refused(two_issuers, tmp_path):
    _, pilot_issuer, _, _ = two_issuers
    verifier = TokenVerifier.from_file(tmp_path / "keys" / "issuer.pub")
    with pytest.raises(TokenError, match="unknown issuer key id 'pilot'"):
        verifier.verify(pilot_issuer.issue("pilot", ["pilot"], 600))


def test_the_installation_issuer_still_signs_every_scope(two_issuers) -> None:
    issuer, _, verifier, _ = two_issuers
    for scope in ("admin", "user", "frontend", "pilot"):
        assert verifier.verify(issuer.issue("x", [scope], 600)).has(scope)


def test_a_token_with_pilot_and_another_scope_is_not_a_pilot_token(two_issuers, tmp_path):
    """The pilot scope is exclusive: neither issuer signs pilot+user, and such a
    token signed anyway acts as a user, never as a pilot; with admin, as admin."""
    issuer, _, verifier, _ = two_issuers
    with pytest.raises(ValueError, match="exclusive"):
        issuer.issue("x", ["pilot", "user"], 600)
    mixed = verifier.verify(forge(tmp_path / "keys" / "issuer.key", "pilot user"))
    assert not mixed.is_pilot and not mixed.has("pilot") and mixed.has("user")
    assert not verifier.verify(forge(tmp_path / "keys" / "issuer.key", "pilot frontend")).has(
        "pilot"
    )
    admin = verifier.verify(issuer.issue("ops", ["pilot", "admin"], 600))
    assert admin.has("pilot") and admin.is_admin


def test_the_two_key_pairs_are_separate_files(tmp_path: Path) -> None:
    main = generate_keypair(tmp_path / "keys")
    pilot = generate_keypair(tmp_path / "keys", "pilot_issuer")
    assert [p.name for p in (*main, *pilot)] == [
        "issuer.key",
        "issuer.pub",
        "pilot_issuer.key",
        "pilot_issuer.pub",
    ]
    assert main[0].read_bytes() != pilot[0].read_bytes()
    assert pilot[0].stat().st_mode & 0o077 == 0
