"""Pool CPU per pilot call: one pilot, N calls in a row over one keep-alive connection.

Heartbeat (without and with claims) and an empty turn (`cycle`, `max_jobs` 0), each
after 200 warm-up calls; the figure is the pool process's CPU (/proc) per call, so it
holds the whole HTTP stack as well as the store's part. Runs against main's code too:
`env -u PYTHONPATH /work/main/.venv/bin/python bench/call_cost.py 3000`.

Run: .venv/bin/python bench/call_cost.py [N]
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pilot_swarm import cpu_seconds, loadavg, slot_ad

from glidewms.launcher import Installation, Options
from glidewms.security.tokens import TokenIssuer


def measure(url: str, pid: int, token: str, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=f"{url}/api/v1", headers=headers) as c:
        slot = slot_ad(0, random.Random(0))
        p = c.post("/pilots", json={"slot": slot, "glidein_id": "x-0"}).json()["pilot_id"]
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("heartbeat", f"/pilots/{p}/heartbeat", {"claims": []}),
            ("heartbeat+2claims", f"/pilots/{p}/heartbeat", {"claims": ["a.1.0", "b.2.0"]}),
            ("cycle(max_jobs 0)", f"/pilots/{p}/cycle", {"max_jobs": 0, "free": {"cpus": 1}}),
        ]
        for name, path, body in calls:
            for _ in range(200):
                c.post(path, json=body)
            cpu0 = cpu_seconds(pid)
            for _ in range(n):
                r = c.post(path, json=body)
            assert r.status_code == 200, r.text
            out[name] = round((cpu_seconds(pid) - cpu0) / n * 1000, 3)
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    with tempfile.TemporaryDirectory() as tmp:
        inst = Installation(Options(state_dir=Path(tmp) / "state"))
        inst.prepare()
        inst.path("run").mkdir(parents=True, exist_ok=True)
        inst.path("logs").mkdir(parents=True, exist_ok=True)
        inst._spawn("pool")
        try:
            inst._await_url("pool", 60)
            issuer = TokenIssuer.from_file(inst.path("keys", "issuer.key"))
            token = issuer.issue("swarm", ["pilot"], 3600, fe="frontend", group="main")
            service = inst.services["pool"]
            out = measure(service.url, service.process.pid, token, n)
        finally:
            inst.stop()
    print(json.dumps({"pool_cpu_ms_per_call": out, "load": loadavg()}))


if __name__ == "__main__":
    main()
