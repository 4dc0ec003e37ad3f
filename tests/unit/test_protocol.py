"""The protocol version: the header every service sends and the peer check."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from glidewms.protocol import (
    API_MAJOR,
    API_PREFIX,
    API_VERSION,
    VERSION_HEADER,
    IncompatiblePeer,
    RemovalStage,
    VersionHeader,
    check_peer,
)


def test_every_response_names_the_version() -> None:
    app = FastAPI()
    app.add_middleware(VersionHeader)

    @app.get("/ok")
    def ok() -> dict[str, int]:
        return {"a": 1}

    client = TestClient(app)
    assert client.get("/ok").headers[VERSION_HEADER] == API_VERSION
    # errors too: a peer learns the version even from a refusal
    assert client.get("/missing").headers[VERSION_HEADER] == API_VERSION


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (None, True),
        (API_VERSION, True),
        (f"{API_MAJOR}.99", True),
        (f"{API_MAJOR + 1}.0", False),
        ("0.9", False),
        ("garbage", False),
        ("", False),
    ],
)
def test_peers_of_another_major_version_are_refused(header: str | None, ok: bool) -> None:
    if ok:
        check_peer("pool", header)
    else:
        with pytest.raises(IncompatiblePeer, match="pool"):
            check_peer("pool", header)


def test_prefix_follows_the_major_version() -> None:
    assert f"/api/v{API_MAJOR}" == API_PREFIX


def test_removal_stages_are_ordered() -> None:
    ranks = [
        s.rank for s in (RemovalStage.NO, RemovalStage.WAIT, RemovalStage.IDLE, RemovalStage.ALL)
    ]
    assert ranks == sorted(ranks) and len(set(ranks)) == 4
    assert RemovalStage("IDLE") is RemovalStage.IDLE
