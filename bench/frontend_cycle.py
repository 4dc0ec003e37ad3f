"""One frontend cycle's pure policy path: demand matching, supply and decisions.

Synthetic but shaped like a CMS-style grid: entries spread over sites in a few
sizes (1, 4 and 8 cores, one GPU kind), autoclusters with different core and
memory requests, about a third restricted to 1-3 desired sites through
`stringListMember(TARGET.GLIDEIN_Site, DESIRED_Sites)` in their Requirements,
some requiring a GPU. Idle jobs are spread evenly over autoclusters (1M jobs
in 1k autoclusters = 1000 each: the job count only scales the numbers added).

    .venv/bin/python bench/frontend_cycle.py                  # the standard table
    .venv/bin/python bench/frontend_cycle.py --acs 1000 --entries 1000 --sites 200
    .venv/bin/python bench/frontend_cycle.py --library   # site tests through the library too
"""

from __future__ import annotations

import argparse
import random
import time

from glidewms.config.frontend import FrontendConfig, GroupConfig
from glidewms.frontend import policy
from glidewms.frontend.observe import FactoryView, observe_group

SIZES = [(1, 2048, 0), (4, 8192, 0), (8, 16384, 0), (8, 32768, 0), (8, 32768, 1)]


def entries(n: int, sites: int) -> list[dict]:
    out = []
    for i in range(n):
        cpus, memory, gpus = SIZES[i % len(SIZES)]
        attrs = {"GPUs": gpus} if gpus else {}
        out.append(
            {
                "name": f"e{i}",
                "site": f"S{i % sites}",
                "cpus": cpus,
                "memory": memory,
                "disk": 100000,
                "attributes": attrs,
                "enabled": True,
            }
        )
    return out


def autoclusters(n: int, jobs: int, sites: int, now: float, rng: random.Random) -> list[dict]:
    per = max(1, jobs // n)
    out = []
    for i in range(n):
        cpus = rng.choice([1, 1, 1, 2, 4, 8])
        memory = rng.choice([1000, 2000, 2000, 4000, 8000]) * cpus
        req = ["TARGET.Cpus >= RequestCpus", "TARGET.Memory >= RequestMemory"]
        extra = ""
        if i % 3 == 0:
            desired = ",".join(f"S{rng.randrange(sites)}" for _ in range(rng.randint(1, 3)))
            extra = f'DESIRED_Sites = "{desired}"; '
            req.insert(0, "stringListMember(TARGET.GLIDEIN_Site, DESIRED_Sites)")
        if i % 10 == 0:
            req.append("TARGET.GPUs >= 1")
        ad = (
            f"[ {extra}RequestCpus = {cpus}; RequestMemory = {memory}; ProcId_Group = {i}; "
            f"Requirements = {' && '.join(req)} ]"
        )
        out.append(
            {
                "id": i,
                "ad": ad,
                "idle": per,
                "running": 0,
                "owners": {"u": per},
                "oldest_idle": now - rng.choice([60, 7200]),
                "request": {"cpus": cpus, "memory": memory, "gpus": int(i % 10 == 0)},
            }
        )
    return out


def cycle(
    acs: list[dict], ents: list[dict], now: float, fast: bool = True, memo: dict | None = None
) -> tuple[float, float, int]:
    """(matching+supply seconds, decision seconds, ClassAd evaluations)."""
    config = FrontendConfig()
    group = GroupConfig()
    t0 = time.perf_counter()
    factory = FactoryView(name="f", url="http://f", entries=ents, counts={})
    view = observe_group(group, "fe", acs, [], [factory], now, fast=fast, memo=memo)
    t1 = time.perf_counter()
    knobs = policy.Knobs()
    rules = policy.RemovalRules()
    for o in view.observations.values():
        levels = [
            policy.Level(
                name="entry",
                pilots=o.supply.total,
                idle_pilots=o.supply.idle_pilots,
                max_pilots=10000,
                max_idle_pilots=100,
                curb_idle_pilots=5,
            ),
            policy.Level(
                name="global", pilots=0, idle_pilots=0, max_pilots=config.max_pilots_global
            ),
        ]
        policy.decide(o.demand, o.supply, levels, knobs, rules, policy.Memory())
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, view.evaluations


def run(acs_n: int, entries_n: int, sites: int, jobs: int, fast: bool = True) -> None:
    now = time.time()
    rng = random.Random(6)
    acs = autoclusters(acs_n, jobs, sites, now, rng)
    ents = entries(entries_n, sites)
    memo: dict = {}
    for label in ("first", "next"):  # the next cycle reuses the first one's answers
        match, decide, evals = cycle(acs, ents, now, fast, memo)
        print(
            f"| {jobs:>9,} | {acs_n:>6,} | {entries_n:>5,} | {sites:>4} | {label} | "
            f"{evals:>9,} | {match:6.2f} s | {decide:5.3f} s | {match + decide:6.2f} s |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--acs", type=int)
    ap.add_argument("--entries", type=int, default=1000)
    ap.add_argument("--sites", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument(
        "--library",
        action="store_true",
        help="no shortcut: every site test through the ClassAd library",
    )
    a = ap.parse_args()
    print(
        "| idle jobs | autoclusters | entries | sites | cycle | ClassAd evaluations | "
        "matching + supply | decisions | total |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    if a.acs:
        run(a.acs, a.entries, a.sites, a.jobs, not a.library)
        return
    for acs_n, entries_n, sites in [
        (1000, 1000, 200),
        (10000, 1000, 200),
        (1000, 250, 200),
        (1000, 500, 200),
        (1000, 2000, 200),
        (2500, 1000, 200),
        (5000, 1000, 200),
        (1000, 1000, 50),
        (1000, 1000, 1000),
        (20000, 1000, 200),
        (10000, 2000, 1000),
    ]:
        run(acs_n, entries_n, sites, a.jobs, not a.library)


if __name__ == "__main__":
    main()
