"""The screenshots of docs/operations.md ("Web console"), made the way the
browser tests make theirs: a whole installation runs a small workload for a
few minutes, then Chromium takes the pages.

    .venv/bin/python -m tests.e2e.console_screenshots docs/img
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from tests.components.chromium import chromium
from tests.harness import systems, wait_for

# two waves of jobs of 20 to 60 s; in the second every fourth fails (badput)
WAVE = """executable = work.sh
arguments = $(Process) {fail}
output = work.$(Process).out
queue {n}
"""


def main(out: Path) -> None:
    from selenium.webdriver.common.by import By

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, systems(Path(tmp), timeseries_seconds=2.0) as start:
        base = Path(tmp)
        system = start()
        (base / "work.sh").write_text(
            "#!/bin/sh\necho working on $1\nsleep $((20 + $1 % 5 * 10))\n"
            'if [ "$2" = fail ] && [ $(($1 % 4)) = 0 ]; then exit 1; fi\n'
        )
        (base / "work.sh").chmod(0o755)
        time.sleep(45)  # an idle installation first: the plots' flat start
        for n, fail in ((24, "ok"), (16, "fail")):
            ids = system.submit(WAVE.format(n=n, fail=fail), base)
            wait_for(
                lambda ids=ids: all(system.job(j)["state"] in ("completed", "held") for j in ids),
                "a wave of jobs",
                900,
            )
            time.sleep(60)  # the pilots' idle timeout: the plots come down again
        url = system.inst.services["web"].url
        token = system.inst.token_file("admin").read_text().strip()
        with chromium(base / "profile") as driver:
            driver.set_window_size(1280, 1100)
            driver.get(f"{url}/login")
            driver.find_element(By.ID, "token").send_keys(token)
            driver.find_element(By.ID, "login-button").click()
            wait_for(lambda: driver.current_url.rstrip("/") == url, "logged in", 30)
            for name, path in (
                ("console-overview", "/?range=15m"),
                ("console-factory", "/factory?range=15m"),
                ("console-search", "/search?q=CVMFS&site=LOCAL&hours=1"),
                ("console-frontend", "/frontend?range=15m"),
            ):
                driver.get(url + path)
                driver.save_screenshot(str(out / f"{name}.png"))
                print(out / f"{name}.png")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img"))
