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
