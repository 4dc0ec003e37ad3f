"""`queue ... from cmd |` and `include : cmd |`: the command's output, as condor_submit.

condor_submit runs such a command on the submit machine, in the submit
directory; glidewms does the same unless GLIDEWMS_SUBMIT_RUN_COMMANDS=0 is set
(to check a file without running anything it names). The item rows
and included statements are checked against HTCondor's own `Submit`, which
runs the same commands.
"""

from __future__ import annotations

from pathlib import Path

import htcondor2
import pytest

from glidewms.submit import Limits, SubmitError, parse_submit

ON = Limits()  # condor_submit runs them: so does glidewms, unless turned off
OFF = Limits(run_commands=0)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "names.txt").write_text("alpha 1\nbeta 2\n")
    return tmp_path


def args_of(text: str, base: Path, limits: Limits = ON) -> list[list[str]]:
    return [job.args for job in parse_submit(text, "t.sub", base, limits=limits, environ={}).jobs]


QUEUES = [
    "queue from seq 1 3 |",
    "queue n from seq 2 2 6 |",
    "queue word, num from cat names.txt |",
    "queue 2 word from printf 'x\\ny\\n' |",  # no shell: the quotes reach printf
    "queue from echo a  $HOME > out.txt |",  # nor $VAR or redirection
]


@pytest.mark.parametrize("queue", QUEUES)
def test_items_from_a_command_are_htcondors(
    queue: str, base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(base)
    sub = htcondor2.Submit(f"executable = run.sh\n{queue}\n")
    theirs = list(sub.itemdata() or [])
    ours = parse_submit(f"executable = run.sh\n{queue}\n", "t.sub", base, limits=ON, environ={})
    count = 2 if queue.startswith("queue 2 ") else 1
    assert len(ours.jobs) == count * len(theirs) > 0
    names = list(theirs[0])
    text = f"executable = run.sh\narguments = {' '.join(f'$({n})' for n in names)}\n{queue}\n"
    expected = [[w for n in names for w in row[n].split()] for row in theirs for _ in range(count)]
    assert args_of(text, base) == expected


def test_the_item_sets_a_command(base: Path) -> None:
    """An item variable named like a command sets that command, from a command too."""
    assert args_of("executable = run.sh\nqueue arguments from seq 4 5 |\n", base) == [["4"], ["5"]]


def test_include_a_commands_output_is_htcondors(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(base)
    text = "include : echo want = 7 |\nexecutable = run.sh\narguments = $(want)\nqueue\n"
    assert htcondor2.Submit(text).expand("arguments") == "7"
    assert args_of(text, base) == [["7"]]
    assert args_of(text.replace("include :", "include command :"), base) == [["7"]]


def test_no_shell_runs(base: Path) -> None:
    args_of("executable = run.sh\nqueue from echo x > made.txt |\n", base)
    assert not (base / "made.txt").exists()


def test_runs_in_the_submit_directory(base: Path) -> None:
    assert args_of(
        "executable = run.sh\narguments = $(Item)\nqueue from ls names.txt |\n", base
    ) == [["names.txt"]]


@pytest.mark.parametrize(
    ("text", "limits", "message"),
    [
        (
            "executable = run.sh\nqueue from seq 1 3 |\n",
            OFF,
            "t.sub:2: queue from 'seq 1 3' |: commands named in a submit file are not "
            "run here (GLIDEWMS_SUBMIT_RUN_COMMANDS=0)",
        ),
        (
            "include : echo x = 1 |\nexecutable = run.sh\nqueue\n",
            OFF,
            "t.sub:1: include 'echo x = 1' |: commands named in a submit file are not run",
        ),
        (
            "executable = run.sh\nqueue from false |\n",
            ON,
            "t.sub:2: queue from: command 'false' failed with exit status 1",
        ),
        (
            "executable = run.sh\nqueue from sleep 5 |\n",
            Limits(run_commands=1, command_seconds=1),
            "did not finish within 1 s",
        ),
        (
            "executable = run.sh\nqueue from yes |\n",
            Limits(run_commands=1, max_items_file_bytes=1000),
            "printed more than 1000 bytes",
        ),
        ("executable = run.sh\nqueue from |\n", ON, "needs a command before the '|'"),
        (
            "executable = run.sh\nqueue from no-such-program-here |\n",
            ON,
            "t.sub:2: queue from: cannot run 'no-such-program-here'",
        ),
    ],
)
def test_refusals_name_the_line_and_reason(
    text: str, limits: Limits, message: str, base: Path
) -> None:
    with pytest.raises(SubmitError) as info:
        parse_submit(text, "t.sub", base, limits=limits, environ={})
    assert message in str(info.value)


def test_the_switch_comes_from_the_environment() -> None:
    assert Limits.from_environ({"GLIDEWMS_SUBMIT_RUN_COMMANDS": "0"}).run_commands == 0
    assert Limits.from_environ({}).run_commands == 1
    assert Limits.from_environ({"GLIDEWMS_SUBMIT_MAX_JOBS": "0"}).max_jobs > 0  # not a switch
