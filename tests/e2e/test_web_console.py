"""The web console in a real headless Chromium (tests/components/chromium.py),
over a whole installation on loopback (`glidewms up`'s four processes) that
runs real jobs on real pilots.

One installation serves the module: two users' jobs have completed by the
time the tests start, and the services sample their time series every
second. Each test logs in by pasting a token into the login form, as a
person would; screenshots go to the test's own directory (tmp_path) and
their paths are printed (pytest shows them with -rP or on failure). Every
test ends by checking that no URL the browser requested carries a token.

Waits poll the page with a deadline; nothing asserts on timing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from glidewms.client import ClientSettings, PoolClient
from glidewms.security.tokens import TokenIssuer, write_secret
from glidewms.submit import parse_submit
from tests.components.chromium import chromium, requested_urls
from tests.harness import System, systems, wait_for

pytestmark = pytest.mark.e2e

MARK = "webconsole-marker-7f3a"  # what the jobs print
HOSTILE = "<img src=x onerror=alert(1)>"  # a job argument the pages must show, not run


@dataclass
class Console:
    system: System
    url: str
    tokens: dict[str, str]  # who -> token
    user_jobs: list[str]
    bob_jobs: list[str]
    base: Path


def job_file(base: Path, name: str, text: str) -> Path:
    path = base / name
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    base = tmp_path_factory.mktemp("console")
    with systems(base, timeseries_seconds=1.0) as start:
        system = start()
        inst = system.inst
        issuer = TokenIssuer.from_file(inst.path("keys", "issuer.key"))
        bob_file = write_secret(inst.path("tokens", "bob.token"), issuer.issue("bob", ["user"]))
        tokens = {
            who: inst.token_file(who).read_text().strip() for who in ("user", "admin", "frontend")
        }
        tokens["bob"] = bob_file.read_text().strip()
        job_file(base, "quick.sh", f"#!/bin/sh\necho {MARK} $1\n")
        user_jobs = system.submit(
            "executable = quick.sh\narguments = $(Process)\noutput = quick.$(Process).out\n"
            "queue 3\n",
            base,
        )
        user_jobs += system.submit(
            f'executable = quick.sh\narguments = "{HOSTILE}"\nqueue 1\n', base
        )
        bob = PoolClient(ClientSettings(inst.services["pool"].url, bob_file))
        bob_jobs = bob.submit(parse_submit("executable = quick.sh\nqueue 1\n", "bob.sub", base))[
            "job_ids"
        ]
        wait_for(
            lambda: all(system.job(j)["state"] == "completed" for j in user_jobs + bob_jobs),
            "the users' jobs to complete",
            180,
        )
        yield Console(system, inst.services["web"].url, tokens, user_jobs, bob_jobs, base)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "profile") as driver:
        yield driver


def shot(driver: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot {path}"
    print(f"screenshot: {path}")
    return path


def login(driver: Any, console: Console, who: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{console.url}/login")
    driver.find_element(By.ID, "token").send_keys(console.tokens[who])
    driver.find_element(By.ID, "login-button").click()
    wait_for(
        lambda: (
            driver.current_url.rstrip("/") == console.url
            and driver.find_elements(By.CSS_SELECTOR, "form.logout")
        ),
        f"{who} logged in",
        30,
    )


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def reload_until(driver: Any, url: str, check: Any, what: str, timeout: float = 120.0) -> None:
    def again() -> bool:
        driver.get(url)
        return bool(check())

    wait_for(again, what, timeout, interval=1.0)


def assert_no_token_in_urls(driver: Any, console: Console) -> None:
    urls = [*requested_urls(driver), driver.current_url]
    assert any(u.startswith(console.url) for u in urls), urls  # the log did record
    for url in urls:
        for who, token in console.tokens.items():
            assert token not in url, f"{who}'s token in a URL the browser requested"
            assert token[-40:] not in url, f"part of {who}'s token in a URL"


def test_pages_load_after_logging_in_with_a_token(
    console: Console, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{console.url}/queue")  # no session: to the login page
    assert browser.current_url == f"{console.url}/login"
    shot(browser, tmp_path, "login")
    login(browser, console, "user")
    assert int(text_of(browser, "count-completed")) >= len(console.user_jobs)
    browser.get(f"{console.url}/queue")
    browser.find_element(By.ID, "history-link").click()
    wait_for(lambda: "history=1" in browser.current_url, "the finished jobs", 30)
    rows = browser.find_elements(By.CSS_SELECTOR, "#jobs tr.job")
    shown = {r.find_element(By.CSS_SELECTOR, "td a").text for r in rows}
    assert set(console.user_jobs) <= shown
    shot(browser, tmp_path, "queue")
    jid = console.user_jobs[0]
    browser.find_element(By.LINK_TEXT, jid).click()
    wait_for(lambda: browser.current_url == f"{console.url}/jobs/{jid}", "the job's page", 30)
    wait_for(lambda: browser.find_elements(By.ID, "ad"), "the job's ad", 30)
    assert "completed" in text_of(browser, "events") or browser.find_elements(
        By.CSS_SELECTOR, "#events tr"
    )
    assert "Cmd" in text_of(browser, "ad")
    assert "quick.0.out" in text_of(browser, "outputs")
    shot(browser, tmp_path, "job")
    # the operator pages refuse a user's token, with the reason
    browser.get(f"{console.url}/factory")
    assert "refused your token" in text_of(browser, "error")
    # logging out ends the session: the next page wants a login again
    browser.get(f"{console.url}/")
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_for(lambda: browser.current_url.endswith("/login"), "logged out", 30)
    browser.get(f"{console.url}/queue")
    assert browser.current_url == f"{console.url}/login"
    assert_no_token_in_urls(browser, console)


def test_a_wrong_token_is_refused_at_login(console: Console, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{console.url}/login")
    forged = console.tokens["user"][:-4] + (
        "AAAA" if not console.tokens["user"].endswith("AAAA") else "BBBB"
    )
    browser.find_element(By.ID, "token").send_keys(forged)
    browser.find_element(By.ID, "login-button").click()
    wait_for(lambda: browser.find_elements(By.ID, "login-error"), "the login's answer", 30)
    assert "does not accept this token" in text_of(browser, "login-error")
    browser.get(f"{console.url}/")
    assert browser.current_url == f"{console.url}/login"
    assert_no_token_in_urls(browser, console)


def test_a_running_workload_shows_its_numbers(
    console: Console, browser: Any, tmp_path: Path
) -> None:
    system = console.system
    job_file(console.base, "slow.sh", "#!/bin/sh\nsleep 120\n")
    slow = system.submit("executable = slow.sh\nqueue 1\n", console.base)
    try:
        login(browser, console, "user")
        reload_until(
            browser,
            f"{console.url}/",
            lambda: int(text_of(browser, "count-running")) >= 1,
            "the overview to count a running job",
        )
        browser.get(f"{console.url}/queue")
        assert re.search(rf"{re.escape(slow[0])}\s+\S+\s+running", text_of(browser, "jobs"))
        shot(browser, tmp_path, "running")
    finally:
        system.pool.act("remove", slow)
    assert_no_token_in_urls(browser, console)


def test_a_user_does_not_see_another_users_jobs(console: Console, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    login(browser, console, "user")
    browser.get(f"{console.url}/queue?history=1")
    owners = {
        r.get_attribute("data-owner") for r in browser.find_elements(By.CSS_SELECTOR, "tr.job")
    }
    assert owners == {console.system.job(console.user_jobs[0])["owner"]}
    page = browser.page_source
    for jid in console.bob_jobs:
        assert f">{jid}<" not in page
        browser.get(f"{console.url}/jobs/{jid}")  # by its address: refused
        assert "not yours" in text_of(browser, "error")
        assert MARK not in browser.page_source
    # and bob sees his, not the user's
    browser.get(f"{console.url}/")
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_for(lambda: browser.current_url.endswith("/login"), "logged out", 30)
    login(browser, console, "bob")
    browser.get(f"{console.url}/queue?history=1")
    shown = {r.text for r in browser.find_elements(By.CSS_SELECTOR, "tr.job td a")}
    assert shown == set(console.bob_jobs)
    assert_no_token_in_urls(browser, console)


def test_operator_pages_and_a_pilot_log(console: Console, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    login(browser, console, "admin")
    browser.get(f"{console.url}/factory")
    assert browser.find_elements(By.CSS_SELECTOR, 'tr.entry[data-entry="local"]')
    assert "local" in text_of(browser, "pilot-states")
    shot(browser, tmp_path, "factory")
    browser.get(f"{console.url}/pilots?entry=local")
    links = browser.find_elements(By.CSS_SELECTOR, "tr.pilot td a")
    assert links
    links[-1].click()
    wait_for(lambda: "/pilots/" in browser.current_url, "a pilot's page", 30)
    assert text_of(browser, "stdout") or text_of(browser, "trail")
    shot(browser, tmp_path, "pilot")
    browser.get(f"{console.url}/frontend")
    assert browser.find_elements(By.CSS_SELECTOR, "#explain tr.explained")
    shot(browser, tmp_path, "frontend")
    assert_no_token_in_urls(browser, console)


def test_log_search_finds_a_known_string(console: Console, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    system = console.system

    def archived() -> dict[str, Any] | None:
        for g in system.glideins():
            if g["state"] not in ("queued", "running", "held", "removing"):
                logs = system.get("factory", f"glideins/{g['glidein_id']}/logs")
                if logs["archived"]:
                    return dict(logs)
        return None

    logs = wait_for(archived, "a pilot's logs archived", 120, interval=1.0)
    pilot = logs["glidein_id"]
    # the agent's first trail record names the pilot and its site: known to be there
    known = f"pilot {pilot} at LOCAL"
    assert any(known in str(r.get("content")) for r in logs["trail"]), logs["trail"][:3]
    login(browser, console, "admin")
    browser.get(f"{console.url}/search")
    browser.find_element(By.ID, "q").send_keys(known.upper())  # any case
    browser.find_element(By.NAME, "site").send_keys("LOCAL")
    browser.find_element(By.ID, "search-button").click()
    wait_for(lambda: browser.find_elements(By.ID, "search-summary"), "search results", 30)
    hits = [
        r.find_element(By.CSS_SELECTOR, "td a").text
        for r in browser.find_elements(By.CSS_SELECTOR, "tr.hit")
    ]
    assert hits == [pilot]
    shot(browser, tmp_path, "search")
    # the same text at another site: none
    browser.get(f"{console.url}/search?q={known.replace(' ', '+')}&site=ELSEWHERE")
    assert not browser.find_elements(By.CSS_SELECTOR, "tr.hit")
    # a string no log holds finds nothing
    browser.get(f"{console.url}/search")
    browser.find_element(By.ID, "q").send_keys("no-pilot-ever-logged-this-9c1e")
    browser.find_element(By.ID, "search-button").click()
    wait_for(lambda: browser.find_elements(By.ID, "search-summary"), "search results", 30)
    assert not browser.find_elements(By.CSS_SELECTOR, "tr.hit")
    assert_no_token_in_urls(browser, console)


def plotted_points(driver: Any, title: str) -> int:
    """The most points of a line in the chart named `title`."""
    from selenium.webdriver.common.by import By

    charts = [
        c
        for c in driver.find_elements(By.CSS_SELECTOR, "svg.chart")
        if (c.get_attribute("aria-label") or "").startswith(title)
    ]
    assert charts, f"no chart {title!r}"
    paths = charts[0].find_elements(By.CSS_SELECTOR, "path.chart-line")
    return max((int(p.get_attribute("data-points") or 0) for p in paths), default=0)


def test_plots_render_from_the_services_time_series(
    console: Console, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    system = console.system
    started = system.submit("executable = quick.sh\nqueue 1\n", console.base)
    wait_for(lambda: system.job(started[0])["state"] == "completed", "a job to run", 120)
    login(browser, console, "admin")
    reload_until(
        browser,
        f"{console.url}/?range=1h",
        lambda: (
            plotted_points(browser, "Jobs by state") >= 2
            and plotted_points(browser, "Submit to start") >= 1
        ),
        "a jobs plot with two points or more, and a wait's median",
    )
    path = browser.find_element(By.CSS_SELECTOR, "svg.chart path.chart-line")
    d = path.get_attribute("d") or ""
    assert re.match(r"M[\d.]+,[\d.]+ L[\d.]+,[\d.]+", d), d
    shot(browser, tmp_path, "overview")
    reload_until(
        browser,
        f"{console.url}/factory",
        lambda: plotted_points(browser, "Pilots alive per entry") >= 2,
        "a pilots-per-entry plot with two points or more",
    )
    assert plotted_points(browser, "Goodput fraction") >= 0  # drawn, even before reports
    assert_no_token_in_urls(browser, console)


def test_forms_want_their_csrf_token_and_cookies_are_locked_down(console: Console) -> None:
    """Outside the browser, the same rules: no login without the login form's
    CSRF value, no logout without the session's, the session cookie out of
    scripts' and other sites' reach, and headers that forbid framing."""
    with httpx.Client(base_url=console.url) as client:
        form = client.get("/login")
        assert "frame-ancestors 'none'" in form.headers["content-security-policy"]
        assert form.headers["x-frame-options"] == "DENY"
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        token = console.tokens["user"]
        refused = httpx.post(f"{console.url}/login", data={"token": token, "csrf": csrf[1]})
        assert refused.status_code == 403  # the value without its cookie: refused
        assert "glidewms_session" not in refused.headers.get("set-cookie", "")
        ok = client.post("/login", data={"token": token, "csrf": csrf[1]})
        assert ok.status_code == 303 and ok.headers["location"] == "/"
        cookie = next(
            c for c in ok.headers.get_list("set-cookie") if c.startswith("glidewms_session=")
        )
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert token not in cookie and token not in ok.text
        page = client.get("/")
        assert page.status_code == 200 and token not in page.text
        session_csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert session_csrf is not None
        assert client.post("/logout", data={"csrf": "forged"}).status_code == 403
        assert client.get("/").status_code == 200  # still logged in
        assert client.post("/logout", data={"csrf": session_csrf[1]}).status_code == 303
        assert client.get("/").headers["location"] == "/login"
        big = client.post("/login", content=b"token=" + b"a" * 70000)
        assert big.status_code == 413


def test_hostile_text_is_shown_not_run(console: Console, browser: Any) -> None:
    """A job's arguments are the user's input: the page shows them as text
    (an alert would fail every call below), never as markup."""
    from selenium.webdriver.common.by import By

    login(browser, console, "user")
    jid = console.user_jobs[-1]
    browser.get(f"{console.url}/jobs/{jid}")
    facts = browser.find_element(By.CSS_SELECTOR, "table.facts")
    assert HOSTILE in facts.text
    assert not facts.find_elements(By.TAG_NAME, "img")
    assert_no_token_in_urls(browser, console)


def test_an_idle_job_says_why(console: Console, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    system = console.system
    (never,) = system.submit(
        "executable = quick.sh\nrequirements = TARGET.Cpus > 1000\nqueue 1\n", console.base
    )
    try:
        login(browser, console, "user")
        browser.get(f"{console.url}/jobs/{never}")
        why = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#why li")]
        assert why[0].startswith("Idle:"), why
        assert any("TARGET.Cpus > 1000" in line for line in why), why
        assert any(line.startswith("Fair share: submitter") for line in why), why
    finally:
        system.pool.act("remove", [never])
    assert_no_token_in_urls(browser, console)
