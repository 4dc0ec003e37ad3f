"""Which pilot tokens may report on, and post the trail of, a glidein (the
factory's `pilot_owns`): a table of tokens against one glidein of fe1/main at
entry `local`."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import HTTPException

from glidewms.factory.routes.glideins import pilot_owns
from glidewms.factory.store import Glidein
from glidewms.security.tokens import Identity

GLIDEIN = Glidein.submitted("local-r1-7", "local", "local", "fe1", "main", 0.0)


def identity(*scopes: str, **claims: Any) -> Identity:
    return Identity("pilot", frozenset(scopes or ("pilot",)), claims)


@pytest.mark.parametrize(
    ("who", "status"),
    [
        (identity(fe="fe1", group="main"), 200),  # a frontend-wide token of its frontend
        (identity(fe="fe1", group="main", entry="local"), 200),
        (identity(fe="fe1", group="main", entry="local", glidein="local-r1-7"), 200),
        (identity(fe="fe1"), 200),  # no group claim: not narrowed by group
        (identity("admin"), 200),
        (identity(fe="fe2", group="main", entry="local"), 403),
        (identity(group="main", entry="local"), 403),  # no fe: no frontend's
        (identity(fe="fe1", group="other"), 403),
        (identity(fe="fe1", group="main", entry="elsewhere"), 403),
        (identity(fe="fe1", group="main", glidein="local-r1-8"), 403),
    ],
)
def test_a_pilot_token_covers_only_glideins_its_claims_name(who: Identity, status: int) -> None:
    if status == 200:
        assert pilot_owns(who, GLIDEIN, GLIDEIN.glidein_id) is GLIDEIN
        return
    with pytest.raises(HTTPException) as refused:
        pilot_owns(who, GLIDEIN, GLIDEIN.glidein_id)
    assert refused.value.status_code == status


def test_an_unknown_glidein_is_404_whoever_asks() -> None:
    with pytest.raises(HTTPException) as refused:
        pilot_owns(identity(fe="fe1"), None, "nope")
    assert refused.value.status_code == 404
