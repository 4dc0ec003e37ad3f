"""Hostile input is normal input: every bound refuses clearly, quickly, with the line.

Each case would otherwise grow without end (a macro that doubles itself, an
include that includes itself, a queue of a billion jobs): the test asserts
the refusal, its line, and that it comes fast.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from glidewms.submit import Limits, SubmitError, load_submit, parse_submit


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    return tmp_path


def refused(base: Path, text: str, limits: Limits | None = None) -> SubmitError:
    start = time.monotonic()
    with pytest.raises(SubmitError) as info:
        parse_submit(text, "h.sub", base, limits=limits)
    assert time.monotonic() - start < 5, "a bound was not enforced early"
    return info.value


def test_macros_that_double_stop_at_the_value_limit(base: Path) -> None:
    lines = ["a0 = " + "x" * 1024] + [f"a{i} = $(a{i - 1})$(a{i - 1})" for i in range(1, 40)]
    err = refused(base, "\n".join(lines) + "\nexecutable = run.sh\narguments = $(a39)\nqueue\n")
    assert err.line == 42 and "expands to more than" in str(err)


def test_deeply_nested_macros_are_refused(base: Path) -> None:
    lines = ["m0 = x"] + [f"m{i} = $(m{i - 1})" for i in range(1, 100)]
    err = refused(base, "\n".join(lines) + "\nexecutable = run.sh\narguments = $(m99)\nqueue\n")
    assert err.line == 102 and "macros nested more than 64 deep" in str(err)


def test_many_substitutions_are_refused(base: Path) -> None:
    text = "x = y\nexecutable = run.sh\narguments = " + "$(x)" * 2000 + "\nqueue\n"
    err = refused(base, text, Limits(max_substitutions=1000))
    assert err.line == 3 and "more than 1000 substitutions" in str(err)


def test_cycles_name_the_chain(base: Path) -> None:
    err = refused(
        base, "a = $(b)\nb = $(c)\nc = $(a)\nexecutable = run.sh\nrequest_cpus = $(a)\nqueue\n"
    )
    assert "$(a) -> $(b) -> $(c) -> $(a)" in str(err)


def test_include_depth_is_bounded(base: Path) -> None:
    for i in range(30):
        (base / f"i{i}.inc").write_text(f"include : i{i + 1}.inc\n")
    (base / "i30.inc").write_text("x = 1\n")
    err = refused(
        base, "include : i0.inc\nexecutable = run.sh\nqueue\n", Limits(max_include_depth=8)
    )
    assert "includes nested more than 8 deep" in str(err)


def test_if_nesting_is_bounded(base: Path) -> None:
    text = "if true\n" * 100 + "endif\n" * 100 + "executable = run.sh\nqueue\n"
    err = refused(base, text)
    assert err.line == 61 and "if nesting too deep" in str(err)


def test_big_files_are_refused_before_parsing(base: Path) -> None:
    big = base / "big.sub"
    big.write_text("# padding\n" * 200 + "executable = run.sh\nqueue\n")
    with pytest.raises(SubmitError, match="larger than 1000 bytes"):
        load_submit(big, limits=Limits(max_file_bytes=1000))
    (base / "items.txt").write_text("x\n" * 1000)
    err = refused(
        base, "executable = run.sh\nqueue a from items.txt\n", Limits(max_items_file_bytes=100)
    )
    assert err.line == 2 and "larger than 100 bytes" in str(err)
    err = refused(
        base, "executable = run.sh\ninclude : big.sub\nqueue\n", Limits(max_file_bytes=1000)
    )
    assert err.line == 2 and "larger than 1000 bytes" in str(err)


def test_binary_and_nul_input_is_refused(base: Path) -> None:
    (base / "nul.sub").write_bytes(b"executable = run.sh\narguments = a\x00b\nqueue\n")
    with pytest.raises(SubmitError, match="NUL byte") as info:
        load_submit(base / "nul.sub")
    assert info.value.line == 2
    (base / "bin.sub").write_bytes(b"\xff\xfe\x00x")
    with pytest.raises(SubmitError, match="not UTF-8"):
        load_submit(base / "bin.sub")


def test_a_billion_jobs_are_refused_without_being_built(base: Path) -> None:
    err = refused(base, "executable = run.sh\nqueue 1000000000\n")
    assert err.line == 2 and "more than 1000000 jobs" in str(err)
    err = refused(base, "executable = run.sh\nqueue 1000 x in (" + "a " * 2000 + ")\n")
    assert err.line == 2 and "jobs in one submit" in str(err)


@pytest.mark.parametrize(
    "text",
    [
        "executable = run.sh\nqueue x in (",
        "executable = run.sh\nx @=END\nnever ends",
        "executable = run.sh\nif true\nqueue",
        "$(((((((\nqueue",
        "executable = $(\nqueue",
        "+ = 3\nqueue",
        "= 3\nqueue",
        "executable = run.sh\nqueue " + "(" * 500,
        "executable = run.sh\narguments = $F" + "p" * 1000 + "(x)\nqueue",
        "executable = run.sh\nrequirements = " + "(" * 5000 + "\nqueue",
    ],
)
def test_garbage_never_crashes(base: Path, text: str) -> None:
    try:
        parse_submit(text, "h.sub", base)
    except SubmitError as exc:
        assert str(exc).startswith("h.sub")


def test_docs_name_every_limit() -> None:
    import dataclasses

    docs = (Path(__file__).resolve().parents[2] / "docs" / "submit.md").read_text()
    for f in dataclasses.fields(Limits):
        assert f"`GLIDEWMS_SUBMIT_{f.name.upper()}`" in docs, f.name
