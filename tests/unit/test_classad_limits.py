"""Bounds checked before the ClassAd library sees outside text (issue 11).

The library overflows its stack on deep trees (measured: ~40k chained
operators or selections, in printing and matching). These tests pin both
sides: everything at the default bounds is safe in the real library (run in
a child process, so a crash fails the test instead of killing pytest), and
everything past them is refused with the attribute named.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest

from glidewms.classad_limits import (
    DEFAULT_LIMITS,
    AdLimitExceeded,
    AdLimits,
    check_ad_text,
    check_expression,
    check_mapping,
    check_value,
)

L = DEFAULT_LIMITS


def chain(op: str, n_ops: int) -> str:
    return op.join(["a1"] * (n_ops + 1))


@pytest.mark.parametrize(
    "text",
    [
        'TARGET.Cpus >= 4 && stringListMember("T2_US_X", DESIRED_Sites) && Memory > 2000',
        'ifThenElse(isUndefined(x), "a+b-c", y)',
        '"strings + hide * operators"',
        "'weird name' == 3",
    ],
)
def test_real_expressions_pass(text: str) -> None:
    check_expression(text, "Requirements")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (chain("+", L.max_operators + 1), "operators"),
        (chain(".", L.max_operators + 1), "operators"),
        ("(" * (L.max_nesting + 1) + "1" + ")" * (L.max_nesting + 1), "nested"),
        ("{" * (L.max_nesting + 1) + "}" * (L.max_nesting + 1), "nested"),
        ('"' + "x" * L.max_expression_bytes + '"', "bytes"),
    ],
)
def test_deep_or_large_expressions_are_refused_naming_the_attribute(text: str, reason: str) -> None:
    with pytest.raises(AdLimitExceeded, match=reason) as info:
        check_expression(text, "GLIDEIN_Start")
    assert info.value.attribute == "GLIDEIN_Start"
    assert "GLIDEIN_Start" in str(info.value)


def test_multi_character_operators_count_once() -> None:
    check_expression(chain("=?=", L.max_operators), "A")
    with pytest.raises(AdLimitExceeded):
        check_expression(chain("=?=", L.max_operators + 1), "A")


def test_escaped_quotes_do_not_end_a_string() -> None:
    # every '+' is inside one string literal: no operator counted
    check_expression('"a\\"' + "+" * (L.max_operators + 10) + '"', "A")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 2**70, -(2**70)])
def test_numbers_outside_range_are_refused(value: float) -> None:
    with pytest.raises(AdLimitExceeded, match="RequestCpus"):
        check_value(value, "RequestCpus")


def test_mapping_bounds() -> None:
    check_mapping({"Cpus": 4, "Name": "slot1@x", "Ok": True, "L": [1, 2.5, "s"]})
    with pytest.raises(AdLimitExceeded, match="attributes"):
        check_mapping({f"A{i}": i for i in range(L.max_attributes + 1)})
    with pytest.raises(AdLimitExceeded, match="name"):
        check_mapping({"bad name": 1})
    with pytest.raises(AdLimitExceeded, match="Big"):
        check_mapping({"Big": "x" * (L.max_value_bytes + 1)})
    with pytest.raises(AdLimitExceeded, match="nested"):
        deep: list = []
        for _ in range(L.max_nesting + 2):
            deep = [deep]
        check_mapping({"D": deep})


def test_ad_text_bounds() -> None:
    check_ad_text('[ A = 1; B = A + 2; C = "x" ]')
    with pytest.raises(AdLimitExceeded, match="bytes"):
        check_ad_text("[ A = 1 ]", AdLimits(max_ad_bytes=4))
    with pytest.raises(AdLimitExceeded, match="operators"):
        check_ad_text("[ A = " + chain("+", L.max_operators + 2 * L.max_attributes + 1) + " ]")


def test_the_bounds_are_safe_in_the_real_library() -> None:
    """Expressions exactly at the bounds parse, print and evaluate in classad2
    without killing the process (the evaluator may refuse a deep one with an
    exception: that is ClassAd Error, not a crash)."""
    code = textwrap.dedent(f"""
        from glidewms import classads
        import classad2
        for text in [{chain("+", L.max_operators)!r}, {chain(".", L.max_operators)!r},
                     {chain("==", L.max_operators)!r},
                     "(" * {L.max_nesting} + "1" + ")" * {L.max_nesting}]:
            job = classad2.ClassAd("[ Requirements = " + text + "; a1 = 1 ]")
            str(job)
            for call in (lambda: job.eval("Requirements"),
                         lambda: job.internalRefs(job.lookup("Requirements"))):
                try:
                    call()
                except (classad2.ClassAdException, ValueError):
                    pass
        print("survived")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "survived" in run.stdout
