"""Entry-scoped pilot tokens and the VO stage, from the frontend's side, against
the real pool app and real HTTP.

The pool is the real pool app (real SQLite, real tokens); the factory is the
stand-in of test_frontend_loop (named there), which records every request, so
a test can take the token the frontend sent for one entry and try it on the
pool exactly as that entry's pilot would.
"""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key

from glidewms.frontend.api import create_app as frontend_app
from glidewms.frontend.service import Frontend
from glidewms.security.tokens import TokenIssuer, TokenVerifier, generate_keypair
from tests.integration.test_frontend_loop import (
    ONE_CORE,
    Keys,
    StandInFactory,
    ThreadServer,
    entry_ad,
    frontend_config,
    real_pool,
    run_cycle,
    submit,
)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    private, public = generate_keypair(tmp_path / "keys")
    return Keys(private, public, TokenIssuer.from_file(private))


def register(pool_url: str, token: str, slot: dict, glidein_id: str = "a-test") -> httpx.Response:
    """What a pilot does first: register its slot with the token it was given
    (a factory names an entry's glideins `<entry>-...`)."""
    return httpx.post(
        f"{pool_url}/api/v1/pilots",
        timeout=10,
        headers={"Authorization": f"Bearer {token}"},
        json={"slot": {"Cpus": 1, "Memory": 2048, **slot}, "glidein_id": glidein_id},
    )


def test_each_entry_gets_its_own_token_which_registers_only_its_slots(tmp_path, keys: Keys):
    """The frontend mints one token per entry it requests pilots for and sends it
    in that entry's request; the pool lets it register only that entry's slots.
    Tokens are renewed per entry once less than half of their life is left, and
    the renewed ones are what the factory gets next. The clock is a variable."""
    factory = StandInFactory("f", keys.public, [entry_ad("a", "SA"), entry_ad("b", "SB")])
    now = [time.time()]
    with real_pool(tmp_path, keys, "pool") as pool, ThreadServer(factory.app()) as fs:
        verifier = TokenVerifier.from_file(keys.public, keys.private.parent / "pilot_issuer.pub")
        config = frontend_config(
            tmp_path,
            keys,
            pool_url=pool.url,
            factory_url=fs.url,
            groups=[{"name": "main", "pilot_token_lifetime": 600}],
        )
        submit(pool, keys, 4, ONE_CORE)
        frontend = Frontend(config, keys.token("fe1", "frontend"), clock=lambda: now[0])
        report = run_cycle(frontend)
        assert report.groups["main"]["factories"]["factory"] == "ok"
        [first] = factory.received
        tokens = {name: e["pilot_token"] for name, e in first["entries"].items()}
        assert set(tokens) == {"a", "b"} and tokens["a"] != tokens["b"]
        sites = {"a": "SA", "b": "SB"}
        for name, token in tokens.items():
            identity = verifier.verify(token)
            assert identity.scopes == {"pilot"}
            claims = identity.claims
            assert (claims["entry"], claims["site"], claims["group"], claims["fe"]) == (
                name,
                sites[name],
                "main",
                "fe1",
            )
        assert "pilot_token" not in first  # no group-wide token: scoped ones only

        # a's token registers a's slots, and a slot that names no entry becomes a's
        assert register(pool.url, tokens["a"], {"GLIDEIN_Entry_Name": "a"}).status_code == 201
        assert register(pool.url, tokens["a"], {}).status_code == 201
        refused = register(pool.url, tokens["a"], {"GLIDEIN_Entry_Name": "b"})
        assert refused.status_code == 403, refused.text
        assert "GLIDEIN_Entry_Name" in refused.json()["detail"]
        elsewhere = register(pool.url, tokens["a"], {"GLIDEIN_Site": "SB"})
        assert elsewhere.status_code == 403 and "GLIDEIN_Site" in elsewhere.json()["detail"]
        renamed = register(pool.url, tokens["a"], {}, glidein_id="b-test")
        assert renamed.status_code == 403 and "glidein_id" in renamed.json()["detail"]
        assert (
            register(pool.url, tokens["b"], {"GLIDEIN_Entry_Name": "b"}, "b-1").status_code == 201
        )
        pilots = httpx.get(
            f"{pool.url}/api/v1/pilots",
            timeout=10,
            headers={"Authorization": f"Bearer {keys.token('o', 'admin')}"},
        )
        assert sorted(
            (p["slot"]["GLIDEIN_Entry_Name"], p["slot"]["GLIDEIN_Site"]) for p in pilots.json()
        ) == [("a", "SA"), ("a", "SA"), ("b", "SB")]

        # reused while fresh, renewed per entry once less than half the life is left
        now[0] += 200
        run_cycle(frontend)
        assert {n: e["pilot_token"] for n, e in factory.received[-1]["entries"].items()} == tokens
        now[0] += 150
        run_cycle(frontend)
        renewed = {n: e["pilot_token"] for n, e in factory.received[-1]["entries"].items()}
        assert all(renewed[n] != tokens[n] for n in tokens)
        assert all(verifier.verify(renewed[n]).claims["entry"] == n for n in tokens)

        # the status shows when each token expires, never the token itself
        app = frontend_app(config, keys.token("fe1", "frontend"), frontend=frontend, loop=False)
        with ThreadServer(app) as server:
            status = httpx.get(
                f"{server.url}/api/v1/status",
                timeout=10,
                headers={"Authorization": f"Bearer {keys.token('ops', 'admin')}"},
            )
        expiry = status.json()["pilot_tokens"]["main"]
        assert set(expiry) == {"a", "b"}
        assert not any(t in status.text for t in (*tokens.values(), *renewed.values()))


def vo_scripts(tmp_path: Path) -> Path:
    source = tmp_path / "vo"
    source.mkdir()
    (source / "scripts.list").write_text("group check_vo.sh\n")
    (source / "check_vo.sh").write_text("#!/bin/bash\nexit 0\n")
    return source


def test_the_vo_stage_is_advertised_and_served_signed(tmp_path, keys: Keys):
    """A group with vo_scripts advertises its stage in every request; what the
    frontend serves there, without a token, is the manifest whose sha256 was
    advertised, signed by the advertised key, listing files that hash right;
    nothing outside the manifest is served, whatever the path."""
    factory = StandInFactory("f", keys.public, [entry_ad("e", "S")])
    with real_pool(tmp_path, keys, "pool") as pool, ThreadServer(factory.app()) as fs:
        config = frontend_config(
            tmp_path,
            keys,
            pool_url=pool.url,
            factory_url=fs.url,
            groups=[{"name": "main", "vo_scripts": vo_scripts(tmp_path)}],
        )
        frontend = Frontend(config, keys.token("fe1", "frontend"))
        app = frontend_app(config, keys.token("fe1", "frontend"), frontend=frontend, loop=False)
        with ThreadServer(app) as server:
            frontend.public_url = server.url
            run_cycle(frontend)
            advert = factory.received[-1]["vo_stage"]
            assert advert["url"] == f"{server.url}/stage/vo/main"
            manifest = httpx.get(f"{advert['url']}/manifest", timeout=10)
            signature = httpx.get(f"{advert['url']}/files/manifest.sig", timeout=10)
            files = {}
            for line in manifest.text.splitlines():
                digest, name = line.split("  ", 1)
                files[name] = (digest, httpx.get(f"{advert['url']}/files/{name}", timeout=10))
            escapes = [
                httpx.get(f"{server.url}/stage/vo/main/{p}", timeout=10).status_code
                for p in (
                    "files/..%2F..%2Fkeys%2Fvo_stage_signing.pem",
                    "files/%2E%2E/manifest",
                    "../../keys/vo_stage_signing.pem",
                    "files/",
                    "nothing",
                )
            ]
            other = httpx.get(f"{server.url}/stage/vo/other/manifest", timeout=10).status_code
    assert manifest.status_code == 200
    assert hashlib.sha256(manifest.content).hexdigest() == advert["manifest_sha256"]
    key = load_der_public_key(base64.b64decode(advert["manifest_key"]))
    assert isinstance(key, Ed25519PublicKey)
    key.verify(signature.content, manifest.content)  # raises if the signature is wrong
    assert set(files) == {"scripts.list", "check_vo.sh"}
    for digest, response in files.values():
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == digest
    # refused: 404 inside the stage; a path the client normalised out of it
    # (`../..`) is no public route, and the gate wants a token there (401)
    assert escapes == [404, 404, 401, 404, 404]
    assert other == 404
    assert (tmp_path / "frontend" / "keys" / "vo_stage_signing.pem").stat().st_mode & 0o077 == 0
