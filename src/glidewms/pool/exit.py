"""What happens when a job's process ends: completed, run again, or held.

HTCondor's job policy at exit, with its names: the submit file's
`on_exit_hold` (OnExitHold) true holds the job with HoldReasonCode 3 and
`on_exit_hold_reason`/`_subcode` if given; else `on_exit_remove`
(OnExitRemove, true when absent) false sends it back to idle to run again;
`max_retries = N` (MaxRetries) reruns a job that exited non-zero until it
has run N+1 times (NumJobCompletions > MaxRetries), and an explicit
`on_exit_remove` true still lets it leave. The expressions see the job's ad
with ExitCode, ExitBySignal and NumJobCompletions (this run included).
Before any of them, a transfer failure the pilot reports holds the job as
HTCondor does (`transfer_action`): an input it could not fetch with
HoldReasonCode 13, a listed output the job did not make with 12.

Self-checkpointing (HTCondor's `checkpoint_exit_code`, SuccessCheckpointExitCode):
an exit with that code is no exit of the job but a checkpoint taken. No exit
policy is evaluated and NumJobCompletions is not counted; the files the pilot
uploaded are merged into the job's checkpoint (a name taken again replaces
the older file), NumCkpts counts it, and the job goes back to idle: any
pilot continues it from that checkpoint (HTCondor restarts it at once on the
same machine; here the pilot that reported it usually claims it again on its
next turn, but a pilot that died since is no loss).

The decision is a pure function (`exit_action`); `finish` applies a batch
of completions in the caller's transaction with one SELECT and one
executemany UPDATE, and leaves the memory (index, accounting) to the caller.
Only jobs whose ad names one of these attributes are parsed at exit. Where a
job goes is checked against the job lifecycle (EXIT) before it is written.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from glidewms import classads
from glidewms.pool.access import grant
from glidewms.pool.checks import StoreLimits, is_sandbox_path
from glidewms.pool.jobs import HOLD_POLICY, HOLD_TRANSFER_INPUT, HOLD_TRANSFER_OUTPUT, full_ad
from glidewms.pool.lifecycle import JOB, JobCause, JobState
from glidewms.pool.schema import counters, events, jobs
from glidewms.pool.shared import trim_events

ENDING = JOB.source(JobCause.EXIT)
DEFAULT_STORE_LIMITS = StoreLimits()  # running: only a running job's process can end

_POLICY_NAMES = re.compile(
    r"(?:^\[ |; )(?:OnExitHold|OnExitRemove|MaxRetries|SuccessCheckpointExitCode) = ",
    re.IGNORECASE,
)
CHECKPOINT = "checkpoint"  # ExitAction.by of a checkpoint taken
EVICTED = "evicted"  # ExitAction.by of a run its pilot vacated that reported its files
_EVICT_KEEPS = re.compile(
    r'(?:^\[ |; )WhenToTransferOutput = "ON_EXIT_OR_EVICT"(?:;| \])', re.IGNORECASE
)


@dataclass
class Completion:
    """A pilot's report that a claim's job ended."""

    claim_id: str
    exit_code: int
    outputs: list[dict[str, str]] = field(default_factory=list)
    wall_seconds: float = 0.0
    missing_outputs: list[str] = field(default_factory=list)  # listed, not made
    evicted: bool = False  # the pilot ended the run (vacated); `checkpoint` has its files
    input_error: dict[str, Any] | None = None  # {"reason", "subcode"}: the job never ran
    # the files of a checkpoint the pilot uploaded (an exit with the job's
    # SuccessCheckpointExitCode); the pool decides from the ad whether it is one
    checkpoint: list[dict[str, str]] | None = None


@dataclass(frozen=True)
class ExitAction:
    """The job's state after it exited, and why (for its event)."""

    state: JobState  # completed, idle, held
    by: str = ""  # the policy that kept it: on_exit_hold, on_exit_remove, max_retries
    reason: str = ""
    subcode: int | None = None
    code: int = HOLD_POLICY  # HoldReasonCode when held

    @property
    def checkpoint(self) -> bool:
        """The job took a checkpoint: it goes on from it, nothing ended."""
        return self.by in (CHECKPOINT, EVICTED)


@dataclass
class FinishedJob:
    claim_id: str
    row: Any  # the job as it was (running)
    action: ExitAction

    @property
    def new_state(self) -> JobState:
        return self.action.state


_COMPLETED = ExitAction(JobState.COMPLETED)  # no exit policy: the common case


def has_exit_policy(ad_text: str) -> bool:
    """Does this stored ad carry an exit policy (so it must be parsed at exit)?"""
    return _POLICY_NAMES.search(ad_text) is not None


def checkpoint_taken(ad: Any, exit_code: int) -> bool:
    """Did the job exit with its SuccessCheckpointExitCode (an integer)?"""
    if "SuccessCheckpointExitCode" not in ad:
        return False
    code = _eval(ad, "SuccessCheckpointExitCode")
    return isinstance(code, int) and not isinstance(code, bool) and code == exit_code


def exit_action(ad: Any, exit_code: int, completions: int) -> ExitAction:
    """HTCondor's exit policy on `ad` for a job that exited with `exit_code`,
    its `completions`-th run (this one included). Undefined or Error is false,
    except OnExitRemove, which is true unless it says false (its default).
    An exit with the job's SuccessCheckpointExitCode is a checkpoint: back to
    idle, no policy evaluated (the caller does not count it as a completion)."""
    if checkpoint_taken(ad, exit_code):
        return ExitAction(JobState.IDLE, CHECKPOINT, f"checkpoint taken (exit code {exit_code})")
    ad["ExitCode"] = exit_code
    ad["ExitBySignal"] = False
    ad["NumJobCompletions"] = completions
    if "OnExitHold" in ad and classads.is_true(_eval(ad, "OnExitHold")):
        reason = _eval(ad, "OnExitHoldReason") if "OnExitHoldReason" in ad else None
        subcode = _eval(ad, "OnExitHoldSubCode") if "OnExitHoldSubCode" in ad else None
        return ExitAction(
            JobState.HELD,
            "on_exit_hold",
            reason
            if isinstance(reason, str) and reason
            else "The on_exit_hold expression evaluated to TRUE",
            subcode if isinstance(subcode, int) and not isinstance(subcode, bool) else None,
        )
    explicit = _eval(ad, "OnExitRemove") if "OnExitRemove" in ad else None
    retries = _eval(ad, "MaxRetries") if "MaxRetries" in ad else None
    if isinstance(retries, int) and not isinstance(retries, bool):
        if exit_code == 0 or completions > retries or explicit is True:
            return ExitAction(JobState.COMPLETED)
        return ExitAction(
            JobState.IDLE,
            "max_retries",
            f"exit code {exit_code}: run {completions} of {retries + 1}",
        )
    if explicit is False:
        return ExitAction(
            JobState.IDLE, "on_exit_remove", "The on_exit_remove expression evaluated to FALSE"
        )
    return ExitAction(JobState.COMPLETED)


MAX_REASON = 4096  # characters of a hold reason made from what a pilot said


def eviction_action(c: Completion) -> ExitAction | None:
    """A run its pilot ended (it was vacated) that the pilot reported with the
    files it had made: back to idle, nothing ended. With
    `when_to_transfer_output = ON_EXIT_OR_EVICT` (`evict_keeps_files`) the
    files become the job's checkpoint, so the next run starts with them, as
    HTCondor spools an evicted run's outputs and brings them back."""
    if not c.evicted:
        return None
    return ExitAction(JobState.IDLE, EVICTED, "evicted: its pilot ended the run")


def evict_keeps_files(ad_text: str) -> bool:
    return _EVICT_KEEPS.search(ad_text) is not None


def transfer_action(c: Completion) -> ExitAction | None:
    """A transfer failure holds the job, as HTCondor holds it, before any exit
    policy: an input the pilot could not fetch (TransferInputError, 13; the
    job never ran), or `transfer_output_files` entries the job did not make
    (TransferOutputError, 12, subcode ENOENT), the reason naming them."""
    if c.input_error is not None:
        reason = str(c.input_error.get("reason", ""))
        subcode = c.input_error.get("subcode")
        return ExitAction(
            JobState.HELD,
            "transfer_input",
            f"Transfer input files failure: {reason}"[:MAX_REASON],
            subcode if isinstance(subcode, int) and subcode > 0 else None,
            HOLD_TRANSFER_INPUT,
        )
    if c.missing_outputs:
        names = ", ".join(repr(n) for n in c.missing_outputs[:20])
        more = len(c.missing_outputs) - 20
        return ExitAction(
            JobState.HELD,
            "transfer_output",
            (
                "Transfer output files failure: the job did not produce "
                f"{names}{f' and {more} more' if more > 0 else ''} "
                "(listed in transfer_output_files): No such file or directory"
            )[:MAX_REASON],
            2,  # ENOENT, as HTCondor's subcode
            HOLD_TRANSFER_OUTPUT,
        )
    return None


def merged_checkpoint(
    old: list[dict[str, str]] | None, new: list[dict[str, str]] | None, most: int
) -> list[dict[str, str]]:
    """The job's checkpoint after one more: the earlier files, each replaced by
    a newer one of its name, then the new names; plain file names only, at most
    `most` files (HTCondor keeps a checkpoint's files in the job's spool
    directory, where a later checkpoint overwrites what it names)."""
    files: dict[str, str] = {}
    for f in [*_kept_outputs(old or [], most), *_kept_outputs(new or [], most)]:
        if "/" in f["name"]:  # outputs may be paths below Iwd; a checkpoint is plain files
            continue
        if f["name"] in files or len(files) < most:
            files[f["name"]] = f["sha256"]
    return [{"name": n, "sha256": s} for n, s in files.items()]


def _eval(ad: Any, name: str) -> Any:
    value = classads.eval_attr(ad, name)
    # an expression that cannot be evaluated counts as undefined
    return None if value is classads.ERROR else value


def finish(
    conn: Connection,
    completions: Sequence[Completion],
    now: float,
    pilot_id: str | None,
    events_out: list[dict[str, Any]] | None = None,
    limits: StoreLimits = DEFAULT_STORE_LIMITS,
) -> list[FinishedJob]:
    """Apply completions in `conn`'s transaction: one SELECT, one executemany
    UPDATE (conditional on the claim still running), one events INSERT and
    the counters. Claims no longer held are left out of the answer.

    With `events_out`, the events are appended there instead, for the
    caller to insert with its own (a pilot turn: one INSERT for both). A job
    an exit policy sends back to run again has its older events trimmed to
    `max_events_per_job` (shared.trim_events): it may do so forever. Of the
    outputs a pilot reports, those with a name that is no plain file name,
    and those past `max_outputs_per_job`, are not kept (the event says how
    many went)."""
    if not completions:
        return []
    by_claim = {c.claim_id: c for c in completions}
    if pilot_id is None:
        rows = conn.execute(_RUNNING, {"b_claims": list(by_claim)})
    else:
        rows = conn.execute(_RUNNING_ON, {"b_claims": list(by_claim), "b_pilot": pilot_id})
    finished, params, new_events = [], [], []
    kept: dict[str, list[dict[str, str]]] = {}
    checkpoint_refs: list[tuple[str, str, int]] = []
    failures = completed = 0
    for row in rows:
        c = by_claim[row.claim_id]
        outputs = kept[row.claim_id] = _kept_outputs(c.outputs, limits.max_outputs_per_job)
        ran = c.input_error is None  # an input that failed: the job never started
        runs = (row.completions or 0) + ran
        action = eviction_action(c) or transfer_action(c) or _COMPLETED
        if action is _COMPLETED and has_exit_policy(row.ad):
            # an ad stored beyond the bounds by an older pool: no policy to apply
            with contextlib.suppress(classads.ClassAdError):
                action = exit_action(full_ad(row), c.exit_code, runs)
        JOB.check(ENDING, action.state, JobCause.EXIT)
        held = action.state == JobState.HELD
        done = action.state == JobState.COMPLETED
        checkpoint, num_checkpoints = row.checkpoint, row.num_checkpoints or 0
        if action.checkpoint:  # nothing ended: no outputs, no exit code, no completion
            runs, outputs = runs - 1, row.outputs or []
            kept[row.claim_id] = []
            taken = c.checkpoint
            if action.by == EVICTED and not evict_keeps_files(row.ad):
                taken = None  # only ON_EXIT_OR_EVICT keeps an evicted run's files
            checkpoint = merged_checkpoint(checkpoint, taken, limits.max_outputs_per_job)
            num_checkpoints += action.by == CHECKPOINT
            checkpoint_refs += [(f["sha256"], row.owner, row.cluster_id) for f in checkpoint]
        completed += done
        failures += c.exit_code != 0 and not action.checkpoint
        params.append(
            {
                "b_cluster": row.cluster_id,
                "b_proc": row.proc_id,
                "b_claim": row.claim_id,
                "b_state": action.state,
                "b_exit": row.exit_code if action.checkpoint else (c.exit_code if ran else None),
                "b_outputs": outputs,
                "b_done": now if done else None,
                "b_wall": c.wall_seconds,
                "b_runs": runs,
                "b_reason": action.reason if held else None,
                "b_code": action.code if held else None,
                "b_ckpt": checkpoint,
                "b_ckpts": num_checkpoints,
                "b_now": now,
            }
        )
        detail: dict[str, Any] = {
            "exit_code": c.exit_code if ran else None,
            "pilot": row.pilot_id,
            "wall_seconds": c.wall_seconds,
        }
        if c.exit_code != 0 and not action.checkpoint:
            detail["failure"] = "job"
        if len(outputs) < len(c.outputs):
            detail["outputs_dropped"] = len(c.outputs) - len(outputs)
        event = {
            "cluster_id": row.cluster_id,
            "proc_id": row.proc_id,
            "time": now,
            "type": "completed",
            "detail": detail,
        }
        if held:
            event = {
                **event,
                "type": "held",
                "detail": {
                    **detail,
                    "by": action.by,
                    "reason": action.reason,
                    "code": action.code,
                    **({"subcode": action.subcode} if action.subcode is not None else {}),
                },
            }
        elif action.checkpoint:
            trim_events(conn, row.cluster_id, row.proc_id, limits.max_events_per_job - 2)
            event = {
                **event,
                "type": "checkpointed" if action.by == CHECKPOINT else "evicted",
                "detail": {
                    **detail,
                    "num_checkpoints": num_checkpoints,
                    "files": len(checkpoint or []),
                    **({"by": EVICTED, "reason": action.reason} if action.by == EVICTED else {}),
                },
            }
        elif action.state == JobState.IDLE:
            trim_events(conn, row.cluster_id, row.proc_id, limits.max_events_per_job - 2)
            event = {
                **event,
                "type": "requeued",
                "detail": {
                    **detail,
                    "by": action.by,
                    "reason": action.reason,
                    "num_job_completions": runs,
                },
            }
        new_events.append(event)
        finished.append(FinishedJob(row.claim_id, row, action))
    if not finished:
        return []
    conn.execute(_FINISH, params)
    grant(
        conn,
        [(o["sha256"], f.row.owner, f.row.cluster_id) for f in finished for o in kept[f.claim_id]]
        + checkpoint_refs,
    )
    if events_out is None:
        conn.execute(events.insert(), new_events)
    else:
        events_out.extend(new_events)
    for name, n in (("jobs_completed", completed), ("job_failures", failures)):
        if n:
            conn.execute(_COUNT, {"b_name": name, "b_n": n})
    return finished


def _kept_outputs(outputs: list[dict[str, str]], most: int) -> list[dict[str, str]]:
    """The outputs worth recording: relative paths of plain names (a client
    writes them below a directory; checks.is_sandbox_path), at most `most`."""
    kept: list[dict[str, str]] = []
    for o in outputs:
        if len(kept) >= most:
            break
        if is_sandbox_path(o.get("name", "")):
            kept.append(o)
    return kept


# The completion path's statements, built (and compiled) once: a pilot turn
# runs them every time, and building one costs more than running it.
_RUNNING = sa.select(jobs).where(
    jobs.c.claim_id.in_(sa.bindparam("b_claims", expanding=True)), jobs.c.state == ENDING
)
_RUNNING_ON = _RUNNING.where(jobs.c.pilot_id == sa.bindparam("b_pilot"))
_FINISH = (
    jobs.update()
    .where(
        jobs.c.cluster_id == sa.bindparam("b_cluster"),
        jobs.c.proc_id == sa.bindparam("b_proc"),
        jobs.c.claim_id == sa.bindparam("b_claim"),
        jobs.c.state == ENDING,
    )
    .values(
        state=sa.bindparam("b_state"),
        exit_code=sa.bindparam("b_exit"),
        outputs=sa.bindparam("b_outputs", type_=jobs.c.outputs.type),
        claim_id=None,
        lease_expires=None,
        completion_date=sa.bindparam("b_done"),
        wall_seconds=sa.bindparam("b_wall"),
        completions=sa.bindparam("b_runs"),
        hold_reason=sa.bindparam("b_reason"),
        hold_code=sa.bindparam("b_code"),
        checkpoint=sa.bindparam("b_ckpt", type_=jobs.c.checkpoint.type),
        num_checkpoints=sa.bindparam("b_ckpts"),
        updated_at=sa.bindparam("b_now"),
    )
)
_COUNT = (
    counters.update()
    .where(counters.c.name == sa.bindparam("b_name"))
    .values(value=counters.c.value + sa.bindparam("b_n", type_=sa.Integer))
)
