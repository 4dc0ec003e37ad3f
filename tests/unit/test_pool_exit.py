"""The exit policy (HTCondor's on_exit_hold, on_exit_remove, max_retries) as a
pure function of the job ad, its exit code and its run count."""

from __future__ import annotations

import pytest

from glidewms import classads
from glidewms.pool.exit import exit_action, has_exit_policy, merged_checkpoint

BASE = '[ Cmd = "/bin/true"; RequestCpus = 1'


@pytest.mark.parametrize(
    ("extra", "exit_code", "runs", "state", "by"),
    [
        ("", 0, 1, "completed", ""),  # no policy
        ("", 3, 1, "completed", ""),  # a job failure completes
        ("MaxRetries = 2", 1, 1, "idle", "max_retries"),  # rerun
        ("MaxRetries = 2", 1, 2, "idle", "max_retries"),
        ("MaxRetries = 2", 1, 3, "completed", ""),  # N+1 runs: done
        ("MaxRetries = 2", 0, 1, "completed", ""),  # success ends it
        ("MaxRetries = 0", 1, 1, "completed", ""),
        ("MaxRetries = 2; OnExitRemove = true", 1, 1, "completed", ""),
        ("MaxRetries = 2; OnExitRemove = false", 1, 3, "completed", ""),
        ("OnExitRemove = false", 0, 5, "idle", "on_exit_remove"),
        ("OnExitRemove = ExitCode == 0", 2, 1, "idle", "on_exit_remove"),
        ("OnExitRemove = ExitCode == 0", 0, 1, "completed", ""),
        ("OnExitRemove = NumJobCompletions >= 2", 0, 1, "idle", "on_exit_remove"),
        ("OnExitRemove = NumJobCompletions >= 2", 0, 2, "completed", ""),
        ("OnExitRemove = Undefined", 1, 1, "completed", ""),  # undefined: default
        ("OnExitHold = ExitCode =!= 0", 3, 1, "held", "on_exit_hold"),
        ("OnExitHold = ExitCode =!= 0", 0, 1, "completed", ""),
        ("OnExitHold = true; MaxRetries = 5", 1, 1, "held", "on_exit_hold"),  # hold first
        ("OnExitHold = NoSuchAttr > 3", 1, 1, "completed", ""),  # undefined: false
        # self-checkpointing: that exit code is a checkpoint, before any policy
        ("SuccessCheckpointExitCode = 85", 85, 1, "idle", "checkpoint"),
        ("SuccessCheckpointExitCode = 85", 0, 1, "completed", ""),
        ("SuccessCheckpointExitCode = 85", 84, 1, "completed", ""),
        ("SuccessCheckpointExitCode = 85; OnExitHold = true", 85, 1, "idle", "checkpoint"),
        ("SuccessCheckpointExitCode = 85; OnExitHold = true", 1, 1, "held", "on_exit_hold"),
        ("SuccessCheckpointExitCode = 85; MaxRetries = 0", 85, 1, "idle", "checkpoint"),
        ("SuccessCheckpointExitCode = 85; MaxRetries = 2", 1, 1, "idle", "max_retries"),
        ("SuccessCheckpointExitCode = 80 + 5", 85, 1, "idle", "checkpoint"),
        ('SuccessCheckpointExitCode = "85"', 85, 1, "completed", ""),  # not an integer
        ("SuccessCheckpointExitCode = true", 1, 1, "completed", ""),
        ("SuccessCheckpointExitCode = Undefined", 0, 1, "completed", ""),
    ],
)
def test_exit_action(extra: str, exit_code: int, runs: int, state: str, by: str) -> None:
    text = f"{BASE}; {extra} ]" if extra else f"{BASE} ]"
    action = exit_action(classads.parse_ad(text), exit_code, runs)
    assert (action.state, action.by) == (state, by)


def test_on_exit_hold_reason_and_subcode() -> None:
    ad = classads.parse_ad(
        f'{BASE}; OnExitHold = true; OnExitHoldReason = "disk full"; OnExitHoldSubCode = 42 ]'
    )
    action = exit_action(ad, 1, 1)
    assert (action.state, action.reason, action.subcode) == ("held", "disk full", 42)
    plain = exit_action(classads.parse_ad(f"{BASE}; OnExitHold = true ]"), 1, 1)
    assert plain.reason == "The on_exit_hold expression evaluated to TRUE"
    assert plain.subcode is None


@pytest.mark.parametrize(
    ("text", "has"),
    [
        (f"{BASE} ]", False),
        (f"{BASE}; MaxRetries = 3 ]", True),
        (f"{BASE}; onexitremove = false ]", True),
        (f'{BASE}; Args = "OnExitHold = x" ]', False),  # only attribute names count
        ("[ OnExitHold = true; Cmd = 1 ]", True),
        (f"{BASE}; SuccessCheckpointExitCode = 85 ]", True),
    ],
)
def test_only_ads_with_a_policy_are_parsed_at_exit(text: str, has: bool) -> None:
    assert has_exit_policy(text) is has


def test_a_checkpoint_action_says_so() -> None:
    ad = classads.parse_ad(f"{BASE}; SuccessCheckpointExitCode = 85 ]")
    assert exit_action(ad, 85, 1).checkpoint
    assert not exit_action(ad, 0, 1).checkpoint


def f(name: str, digit: str) -> dict[str, str]:
    return {"name": name, "sha256": digit * 64}


@pytest.mark.parametrize(
    ("old", "new", "most", "merged"),
    [
        (None, [f("a", "1")], 10, [f("a", "1")]),
        ([f("a", "1")], None, 10, [f("a", "1")]),  # a checkpoint without files keeps the last
        ([f("a", "1"), f("b", "2")], [f("b", "3")], 10, [f("a", "1"), f("b", "3")]),
        ([f("a", "1")], [f("b", "2"), f("c", "3")], 2, [f("a", "1"), f("b", "2")]),
        ([f("a", "1"), f("b", "2")], [f("b", "3"), f("c", "4")], 2, [f("a", "1"), f("b", "3")]),
        ([], [f("x/y", "1"), f("..", "2"), f("ok", "3")], 10, [f("ok", "3")]),  # plain names
    ],
)
def test_a_checkpoint_merges_into_the_last(old, new, most, merged) -> None:
    assert merged_checkpoint(old, new, most) == merged
