"""`glidewms submit --dry-run`: the job ads that would be queued, as condor_submit
-dry-run shows them: each ad in the long form (`Attr = value`, one per line),
ads separated by a blank line, the cluster id taken to be 1, and a last line
saying how many jobs that would make.
"""

from __future__ import annotations

from glidewms.submit.model import SubmitDescription

DRY_RUN_CLUSTER = 1


def ads_text(description: SubmitDescription) -> str:
    """The long-form ads of every job, cluster 1, separated by blank lines."""
    blocks = []
    for job in description.jobs:
        filled = job.with_cluster(DRY_RUN_CLUSTER)
        blocks.append("\n".join(f"{k} = {v}" for k, v in filled.attrs.items()))
    return "\n\n".join(blocks) + "\n"


def summary(description: SubmitDescription) -> str:
    return f"{len(description.jobs)} job(s) dry-run to cluster {DRY_RUN_CLUSTER}."
