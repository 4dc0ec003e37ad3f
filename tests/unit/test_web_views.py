"""The web console's pure parts: sessions, token files, what the pages
summarise, and the SVG charts (glidewms/web/)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from glidewms.security.tokens import TokenIssuer, generate_keypair
from glidewms.web import sessions as s
from glidewms.web import views
from glidewms.web.svg import Series, line_chart, nice_max


def test_a_session_holds_the_token_and_says_who_from_it(tmp_path: Path) -> None:
    private, _ = generate_keypair(tmp_path)
    token = TokenIssuer.from_file(private).issue("alice", ["user"])
    store = s.Sessions(lifetime=60, limit=10)
    session = store.new(token)
    assert (session.subject, session.scopes) == ("alice", frozenset({"user"}))
    assert not session.is_operator
    assert store.get(session.id) is session
    assert token not in repr(session)  # never in a log line
    assert len(session.id) >= 40 and session.id != session.csrf
    assert store.get("x" * 200) is None and store.get(None) is None


def test_sessions_expire_unused_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(s.time, "monotonic", lambda: now[0])
    store = s.Sessions(lifetime=60, limit=2)
    a, b = store.new("a.b.c"), store.new("d.e.f")
    now[0] += 30
    assert store.get(a.id) is a  # used: the oldest is now b
    store.new("g.h.i")  # over the limit: the least recently used goes
    assert store.get(b.id) is None
    now[0] += 61
    assert store.get(a.id) is None  # unused too long
    assert s.token_claims("not a jwt") == ("", frozenset())


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [("x", "x", True), ("x", "y", False), ("", "", False), (None, None, False), ("x", None, False)],
)
def test_csrf_values_must_both_be_there_and_equal(a: str | None, b: str | None, same: bool) -> None:
    assert s.same(a, b) is same


def test_token_files_only_from_the_allowed_directories(tmp_path: Path) -> None:
    allowed = tmp_path / "tokens"
    allowed.mkdir()
    (allowed / "admin.token").write_text("tok-en\n")
    secret = tmp_path / "secret"
    secret.write_text("do not read")
    (allowed / "link").symlink_to(secret)
    assert views.read_token_file(str(allowed / "admin.token"), [allowed]) == "tok-en"
    for path, why in (
        (str(secret), "token_dirs"),
        (str(allowed / "link"), "token_dirs"),  # a link out of the directory
        (str(allowed / ".." / "secret"), "token_dirs"),
        (str(allowed / "missing"), "No such"),
        (str(allowed), "Not a token file"),
    ):
        with pytest.raises(ValueError, match=why) as exc:
            views.read_token_file(path, [allowed])
        assert "do not read" not in str(exc.value)
    with pytest.raises(ValueError, match="token_dirs"):
        views.read_token_file(str(allowed / "admin.token"), [])


def test_queue_summary_counts_per_owner_and_cluster() -> None:
    jobs = [
        {"job_id": "1.0", "owner": "alice", "state": "idle", "cmd": "a"},
        {"job_id": "1.1", "owner": "alice", "state": "running", "cmd": "a"},
        {"job_id": "2.0", "owner": "bob", "state": "held", "cmd": "b"},
        {"job_id": "10.0", "owner": "alice", "state": "idle", "cmd": "c"},
    ]
    summary = views.queue_summary(jobs)
    assert summary["states"] == ["idle", "running", "held"]
    assert summary["totals"] == {"idle": 2, "running": 1, "held": 1}
    assert dict(summary["owners"]) == {
        "alice": {"idle": 2, "running": 1},
        "bob": {"held": 1},
    }
    assert [c for c, _ in summary["clusters"]] == ["10", "2", "1"]  # newest first
    assert summary["clusters"][2][1]["running"] == 1


AD = 'Cmd = "/bin/x"\nRequirements = TARGET.Cpus >= 64\n'


@pytest.mark.parametrize(
    ("job", "explain", "expected"),
    [
        ({"state": "running"}, None, []),
        ({"state": "held", "hold_reason": "disk full"}, None, ["Held: disk full"]),
        ({"state": "idle", "ad_long": AD}, None, ["Idle:", "Requirements = TARGET.Cpus >= 64"]),
        ({"state": "idle", "num_starts": 2}, None, ["Idle:", "It started 2 time(s)"]),
        (
            {"state": "idle"},
            [{"entry": "f/e", "group": "main", "demand": {"idle_jobs": 0}}],
            ["Idle:", "The frontend's last cycle counted no idle job"],
        ),
        (
            {"state": "idle"},
            [
                {
                    "entry": "f/e",
                    "group": "main",
                    "demand": {"idle_jobs": 3},
                    "request": {"idle": 2},
                    "reasons": ["curbed"],
                }
            ],
            [
                "Idle:",
                "Entry f/e (group main): 3 idle job(s) match; 2 idle pilot(s) requested; curbed",
            ],
        ),
    ],
)
def test_why_idle(job: dict, explain: list | None, expected: list[str]) -> None:
    reasons = views.why_idle(job, explain)
    assert len(reasons) == len(expected)
    for found, start in zip(reasons, expected, strict=True):
        assert found.startswith(start)


def test_why_idle_says_where_the_submitter_stands_in_fair_share() -> None:
    prio = [
        {"submitter": "bob", "effective_priority": 5.0, "running_cores": 4},
        {"submitter": "grp.alice", "effective_priority": 9.0, "running_cores": 2},
    ]
    reasons = views.why_idle({"state": "idle", "owner": "alice"}, None, prio)
    assert reasons[-1] == (
        "Fair share: submitter grp.alice has effective priority 9 (2 of 2; lower goes "
        "first), 2 core(s) running."
    )
    assert len(views.why_idle({"state": "idle", "owner": "carol"}, None, prio)) == 1


def test_goodput_fraction_per_row() -> None:
    rows = views.factory_rows(
        [
            {"entry": "b", "goodput_seconds": 30, "badput_seconds": 10},
            {"entry": "a", "goodput_seconds": 0, "badput_seconds": 0},
        ]
    )
    assert [(r["entry"], r["goodput_fraction"]) for r in rows] == [("a", None), ("b", 0.75)]


@pytest.mark.parametrize(("v", "top"), [(0, 1), (0.3, 0.5), (1, 1), (3, 5), (7, 10), (120, 200)])
def test_nice_max(v: float, top: float) -> None:
    assert nice_max(v) == pytest.approx(top)


def test_a_chart_draws_each_series_and_escapes_its_labels() -> None:
    svg = line_chart(
        "Jobs <idle>",
        [Series('<script>"x"', [(100.0, 1.0), (150.0, 3.0), (200.0, 2.0)]), Series("b", [])],
        since=100.0,
        until=200.0,
    )
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert 'aria-label="Jobs &lt;idle&gt;"' in svg
    (path,) = re.findall(r'<path d="([^"]+)"[^>]*data-points="3"', svg)
    points = re.findall(r"[ML]([\d.]+),([\d.]+)", path)
    assert len(points) == 3
    xs = [float(x) for x, _ in points]
    ys = [float(y) for _, y in points]
    assert xs == sorted(xs) and xs[0] < xs[-1]
    assert ys[1] < ys[2] < ys[0]  # 3 drawn highest, then 2, then 1 (SVG y grows down)
    assert "no data yet" in line_chart("t", [], since=0.0, until=10.0)


def test_the_web_config_wants_a_pool_and_real_urls(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from glidewms.config.web import WebConfig

    assert WebConfig(pool_url="http://127.0.0.1:9618").factory_url is None
    with pytest.raises(ValidationError, match="pool_url"):
        WebConfig()  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="factory_url"):
        WebConfig(pool_url="http://127.0.0.1:1", factory_url="ftp://x")
    with pytest.raises(ValidationError, match="tls_cert and tls_key go together"):
        WebConfig(pool_url="http://127.0.0.1:1", tls_cert=tmp_path / "c.pem")
