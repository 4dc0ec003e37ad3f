"""Queue statements and item data, checked against HTCondor's `Submit.itemdata()`.

HTCondor's python binding parses the same queue statement and returns the
item rows it would queue (before any slice): ours must give the same rows,
split into the same values. It cannot report an empty value, so rows with
empty values (which condor_submit queues too, with a warning) are checked
by hand.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import htcondor2
import pytest

from glidewms.submit import Limits, SubmitError, parse_submit
from glidewms.submit.context import Context
from glidewms.submit.queue import split_row
from glidewms.submit.reader import Reader


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    for name in ("a.dat", "b.dat", "c.txt"):
        (tmp_path / name).write_text(name)
    (tmp_path / "d1.dat").mkdir()
    (tmp_path / "d2").mkdir()
    (tmp_path / "rows.txt").write_text("x 1\ny 2 3\n  last  \n")
    (tmp_path / "cont.txt").write_text("one \\\n  two\nthree\n")
    return tmp_path


def our_rows(text: str, base: Path) -> list[dict[str, str]]:
    """Rows before any slice (HTCondor's itemdata() does not apply it)."""
    reader = Reader(Context(base_dir=base, submit_file=""))
    reader.read(text, "t.sub")
    args = reader.blocks[0].args
    width = len(args.names)
    return [
        dict(
            zip(args.names, split_row(item, width) if args.mode == "from" else [item], strict=True)
        )
        for item in args.items
    ]


def their_rows(text: str, base: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    monkeypatch.chdir(base)  # HTCondor reads item files and globs relative to its cwd
    rows = htcondor2.Submit(text).itemdata()
    return [] if rows is None else list(rows)


QUEUES = [
    "queue a from (\nx y\nz w\n)",
    "queue a,b from (\nx ,y\nz\x1fw\n)",
    "queue arguments from (\nx ,y\nz w\n)",
    "queue a b c from (\n1,2,3,4\n5 6 7\n)",
    "queue in (a b,c\td)",
    "queue x from (\n  lead trail  \n# comment\n)",
    "queue x from (one, two)",
    "queue x, y from (one, two)",
    "queue 2 x in a b c",
    "queue 3 in (a)",
    "queue 2x in (a)",
    "queue Input From (a)",
    "queue x in (\na, b\nc d\n)",
    "queue x from [1:] (\na\nb\n)",
    "queue a,b from rows.txt",
    "queue a from cont.txt",
    "queue f matching *.dat",
    "queue f matching files *.dat",
    "queue f matching dirs *",
    "queue f matching any *.dat c.txt",
    "queue f matching (*.dat, *.txt)",
    "queue f matching *.dat *.dat",
    "queue f matching files [1:] *.dat",
    "queue f matching nothing.*",
]


@pytest.mark.parametrize("queue", QUEUES)
def test_item_rows_match_htcondor(queue: str, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = f"executable = run.sh\n{queue}\n"
    assert our_rows(text, base) == their_rows(text, base, monkeypatch)


def _args(desc) -> list[list[str]]:  # type: ignore[no-untyped-def]
    return [j.args for j in desc.jobs]


@pytest.mark.parametrize(
    ("row", "columns", "values"),
    [
        ("x ,y", 2, ["x", ",y"]),
        ("\x1fz\x1fw", 2, ["", "z\x1fw"]),
        ("z\x1fw q\x1fr", 3, ["z", "w q", "r"]),
        ("  a  ", 2, ["a", ""]),
        ("", 2, ["", ""]),
        ("1,2,3,4", 3, ["1", "2", "3,4"]),
    ],
)
def test_row_splitting(row: str, columns: int, values: list[str]) -> None:
    """HTCondor's split_item (the binding cannot show values holding \\x1f)."""
    assert split_row(row, columns) == values


def test_item_variables_that_name_commands_set_them(base: Path) -> None:
    desc = parse_submit(
        textwrap.dedent("""\
        executable = run.sh
        arguments = default
        queue request_memory, arguments from (
          2G --a 'x y'
          512, -b
        )
        """),
        "t.sub",
        base,
    )
    assert _args(desc) == [["--a", "'x", "y'"], ["-b"]]
    assert [j.attrs["RequestMemory"] for j in desc.jobs] == ["2048", "512"]


def test_slices_keep_the_item_index(base: Path) -> None:
    desc = parse_submit(
        "executable = run.sh\narguments = $(x) $(ItemIndex) $(Row) $(Step)\n"
        "queue 2 x in [::2] (a, b, c)\n",
        "t.sub",
        base,
    )
    assert _args(desc) == [
        ["a", "0", "0", "0"],
        ["a", "0", "0", "1"],
        ["c", "2", "2", "0"],
        ["c", "2", "2", "1"],
    ]


def test_empty_values_queue_jobs_with_a_warning(base: Path) -> None:
    desc = parse_submit(
        "executable = run.sh\narguments = \"'$(a)' '$(b)'\"\nqueue a, b from (\nx\n\n)\n",
        "t.sub",
        base,
    )
    assert _args(desc) == [["x", ""], ["", ""]]
    assert desc.warnings == [
        "t.sub:3: empty value(s) for b at ItemIndex=0",
        "t.sub:3: empty value(s) for a,b at ItemIndex=1",
    ]


def test_item_files_keep_comment_lines_as_htcondor_does(base: Path) -> None:
    (base / "items.txt").write_text("x 1\n# not a comment\n")
    desc = parse_submit(
        "executable = run.sh\narguments = $(a)\nqueue a, b from items.txt\n", "t.sub", base
    )
    assert _args(desc) == [["x"], ["#"]]
    assert any("'# not a comment' is queued as an item" in w for w in desc.warnings)


def test_queue_from_stdin(base: Path) -> None:
    text = "executable = run.sh\narguments = $(a) $(b)\nqueue a, b from -\n"
    desc = parse_submit(text, "t.sub", base, stdin=io.StringIO("1 one\n2 two\n"))
    assert _args(desc) == [["1", "one"], ["2", "two"]]
    with pytest.raises(SubmitError, match="standard input was already read") as info:
        parse_submit(text + "queue a from -\n", "t.sub", base, stdin="x\n")
    assert info.value.line == 4


def test_max_materialize_and_max_idle_are_accepted(base: Path) -> None:
    desc = parse_submit(
        "executable = run.sh\nmax_materialize = 5\nmax_idle = 2\nqueue 20\n", "t.sub", base
    )
    assert len(desc.jobs) == 20
    with pytest.raises(SubmitError, match="max_materialize: expected a whole number >= 1"):
        parse_submit("executable = run.sh\nmax_materialize = lots\nqueue\n", "t.sub", base)


def test_several_queue_statements_number_jobs_on(base: Path) -> None:
    desc = parse_submit(
        textwrap.dedent("""\
        executable = run.sh
        arguments = $(Process) $(Item) $(Step)
        queue 2
        queue in (a, b)
        queue 1 from (
        z
        )
        """),
        "t.sub",
        base,
    )
    assert _args(desc) == [
        ["0", "0"],
        ["1", "1"],
        ["2", "a", "0"],
        ["3", "b", "0"],
        ["4", "z", "0"],
    ]


@pytest.mark.parametrize(
    ("queue", "fragment"),
    [
        ("queue x in", "expected a job count"),
        ("queue 2 x y in (a)", "'in' takes exactly one variable name"),
        ("queue process in (a)", "'process' cannot be a queue variable name"),
        ("queue x from table (a)", "'from table' is not supported by glidewms"),
        ("queue x in files (a)", "'files' can only follow 'matching'"),
        ("queue x from [1:2:0] (a)", "a slice step cannot be 0"),
        ("queue -1", "expected a job count"),
    ],
)
def test_bad_queue_statements(queue: str, fragment: str, base: Path) -> None:
    with pytest.raises(SubmitError, match=fragment) as info:
        parse_submit(f"executable = run.sh\n{queue}\n", "t.sub", base)
    assert info.value.line == 2


def test_the_number_of_jobs_is_bounded(base: Path) -> None:
    limits = Limits(max_jobs=100)
    with pytest.raises(SubmitError, match="more than 100 jobs in one submit") as info:
        parse_submit("executable = run.sh\nqueue 60\nqueue 41\n", "t.sub", base, limits=limits)
    assert info.value.line == 3
    assert (
        len(parse_submit("executable = run.sh\nqueue 100\n", "t.sub", base, limits=limits).jobs)
        == 100
    )
    assert Limits.from_environ({"GLIDEWMS_SUBMIT_MAX_JOBS": "7"}).max_jobs == 7
    assert Limits.from_environ({"GLIDEWMS_SUBMIT_MAX_JOBS": "x"}).max_jobs == Limits().max_jobs
