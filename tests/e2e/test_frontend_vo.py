"""The frontend's VO stage in the whole system on loopback: the frontend builds
and signs it from the group's `vo_scripts`, serves it, and advertises it in its
requests; the factory passes it to the pilots it starts (local backend, real
processes); each pilot fetches and verifies it and runs its script before it
registers. The slot attribute the VO script publishes, seen in the pool, is
the evidence that the script ran on the pilot.

Waits poll a condition with a deadline (the services are other processes);
no assertion is about timing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_frontend_overflow import local_entry
from tests.harness import systems, wait_for

pytestmark = pytest.mark.e2e

SCRIPT = """#!/bin/bash
echo "VO_Checked yes" >> "$1"
printf '{"status": "ok", "category": "VO_Config", "detail": "vo ok", %s}' \
  '"slot_attrs": ["VO_Checked"], "job_env": []' > "$GLIDEIN_RESULT_FILE"
"""


def test_pilots_run_the_groups_vo_scripts_from_the_frontends_stage(tmp_path: Path):
    vo = tmp_path / "vo"
    vo.mkdir()
    (vo / "scripts.list").write_text("group check_vo.sh\n")
    (vo / "check_vo.sh").write_text(SCRIPT)
    with systems(tmp_path, http_timeout=10) as start:
        s = start(
            entries=[local_entry("a", "SA", 1, 3)],
            frontend_groups=[{"name": "main", "vo_scripts": str(vo)}],
        )
        status = s.frontend_status()
        digest = status["vo_stages"]["main"]["manifest_sha256"]
        [jid] = s.submit(
            "executable = /bin/true\ntransfer_executable = false\nrequest_memory = 100\nqueue 1\n",
            tmp_path,
        )
        [pilot] = wait_for(lambda: s.pilots()[:1], "a pilot to register", timeout=120)
        wait_for(lambda: s.job(jid)["state"] == "completed", "the job to complete", timeout=120)
        [request] = [r for r in s.factory("requests") if r["group"] == "main"]
    assert request["vo_stage"]["manifest_sha256"] == digest
    assert request["vo_stage"]["url"] == f"{s.inst.services['frontend'].url}/stage/vo/main"
    assert pilot["slot"].get("VO_Checked") == "yes", pilot["slot"]
