"""ClassAd helpers over the real classad2 library, and the pitfalls they guard."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from glidewms import classads
from glidewms.classads import ClassAd


def test_string_list_functions_work():
    """Without `import htcondor2` first, stringListMember silently gives Error."""
    job = classads.parse_ad(
        '[ DESIRED_Sites = "A,B"; '
        "Requirements = stringListMember(TARGET.GLIDEIN_Site, DESIRED_Sites) ]"
    )
    assert classads.job_fits_slot(job, classads.ad_from_dict({"GLIDEIN_Site": "B"}))
    assert not classads.job_fits_slot(job, classads.ad_from_dict({"GLIDEIN_Site": "C"}))


@pytest.mark.parametrize("text", ["[ A = ]", "[ A = (1 ]", "A = 1", "[ A = 1 B = 2 ]"])
def test_broken_ads_are_refused_not_emptied(text):
    with pytest.raises(classads.ClassAdError):
        classads.parse_ad(text)


@pytest.mark.parametrize("text", ["a; Cmd = 1", "a ] [ b", "A >", "", "a ]"])
def test_expression_must_be_exactly_one(text):
    with pytest.raises(classads.ClassAdError):
        classads.parse_expr(text)


def test_expression_with_separators_inside_strings_is_fine():
    expr = classads.parse_expr('Owner == "a;]"')
    assert classads.constraint_matches(expr, classads.ad_from_dict({"Owner": "a;]"}))


@pytest.mark.parametrize(
    ("value", "truth"),
    [(True, True), (False, False), (1, True), (0, False), (2.5, True), ("yes", False)],
)
def test_truth(value, truth):
    assert classads.is_true(value) is truth


def test_undefined_is_not_true_although_it_is_an_int_enum():
    undefined = classads.parse_expr("TARGET.GPUs >= 1").eval(
        scope=classads.ClassAd(), target=classads.ClassAd()
    )
    assert isinstance(undefined, int)  # the trap: Value is an IntEnum
    assert classads.is_true(undefined) is False
    assert classads.number(undefined) is None


def test_slot_start_is_checked_against_the_job():
    job = classads.parse_ad('[ Owner = "mallory"; Requirements = true ]')
    slot = classads.ad_from_dict({"Cpus": 1})
    slot["Start"] = classads.parse_expr('TARGET.Owner != "mallory"')
    assert not classads.job_fits_slot(job, slot)


def test_autocluster_signature_ignores_insignificant_attributes():
    a = classads.parse_ad(
        '[ RequestCpus = 1; Cmd = "/a"; Site = "X"; Requirements = TARGET.Site == MY.Site ]'
    )
    b = classads.parse_ad(
        '[ RequestCpus = 1; Cmd = "/b"; Site = "X"; Requirements = TARGET.Site == MY.Site ]'
    )
    c = classads.parse_ad(
        '[ RequestCpus = 1; Cmd = "/a"; Site = "Y"; Requirements = TARGET.Site == MY.Site ]'
    )
    assert classads.signature(a)[0] == classads.signature(b)[0]
    assert classads.signature(a)[0] != classads.signature(c)[0]


def _condor_config_after_import(env: dict[str, str]) -> list[str]:
    """CONDOR_CONFIG and a knob as a fresh process sees them once glidewms.classads
    (which picks the configuration for the whole process) has been imported."""
    probe = (
        "import os, glidewms.classads, htcondor2; "
        "print(os.environ.get('CONDOR_CONFIG')); "
        "print(htcondor2.param.get('GLIDEWMS_PROBE_KNOB'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.split()


def test_a_condor_config_already_set_is_used_untouched(tmp_path: Path) -> None:
    """A host's real HTCondor configuration must reach the bindings (and the
    condor_* commands started later), not be swapped for an empty one."""
    config = tmp_path / "condor_config"
    config.write_text("GLIDEWMS_PROBE_KNOB = 42\n")
    env = {**os.environ, "CONDOR_CONFIG": str(config)}
    assert _condor_config_after_import(env) == [str(config), "42"]


def test_without_any_configuration_the_bindings_get_an_empty_one(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    if any(p.is_file() for p in classads.htcondor_config_files(home, as_root=True)):
        pytest.skip("this host has an HTCondor configuration")
    env = {k: v for k, v in os.environ.items() if k != "CONDOR_CONFIG"} | {"HOME": str(home)}
    assert _condor_config_after_import(env) == ["/dev/null", "None"]


def test_htcondor_looks_in_the_users_own_directory_first_except_for_root() -> None:
    home = Path("/home/alice")
    user = classads.htcondor_config_files(home, as_root=False)
    assert user[:3] == [
        home / ".condor" / "condor_config",
        Path("/etc/condor/condor_config"),
        Path("/usr/local/etc/condor_config"),
    ]
    assert classads.htcondor_config_files(home, as_root=True) == user[1:]


def test_a_users_own_configuration_is_named_so_the_bindings_keep_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """htcondor2's own check at import does not know ~/.condor/ and would put
    /dev/null in its place."""
    own = tmp_path / ".condor" / "condor_config"
    own.parent.mkdir()
    own.write_text("")
    monkeypatch.delenv("CONDOR_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    classads.import_htcondor()
    assert os.environ["CONDOR_CONFIG"] == str(own)


# ------------------------------------------------- bounds before the library (issue 11)

DEEP = "+".join(["1"] * 40_000)  # parses, then kills the process when printed


@pytest.mark.parametrize(
    "text",
    [
        f"[ Cmd = 1; Requirements = {DEEP} ]",
        f'[ Name = "a;b"; Requirements = /* " */ {"+".join(["1"] * 2000)} /* " */ ]',
        f'[ Requirements = 1 // " ; \n + {"+".join(["1"] * 2000)} ]',
    ],
)
def test_a_deep_attribute_is_refused_by_name_before_parsing(text: str) -> None:
    """Comments and strings hide nothing from the count (the parser skips them)."""
    with pytest.raises(classads.ClassAdTooLarge) as info:
        classads.parse_ad(text)
    assert info.value.attribute == "Requirements"
    assert "Requirements" in str(info.value) and "operators" in str(info.value)


def test_comments_and_separators_inside_strings_are_still_fine() -> None:
    ad = classads.parse_ad('[ A = /* " ; ] */ 1 + 1; B = "x // y; z"; \'we;ird\' = 2 // ok\n ]')
    assert ad.eval("A") == 2 and ad["B"] == "x // y; z" and len(ad) == 3


@pytest.mark.parametrize(
    ("text", "attribute"),
    [
        ("[ RequestCpus = 99999999999999999999999 ]", "RequestCpus"),  # the library: 0
        ("[ JobPrio = 1e400 ]", "JobPrio"),  # the library: infinity
        ("[ JobPrio = .5e400 ]", "JobPrio"),
        ("[ " + "; ".join(f"A{i} = {i}" for i in range(600)) + " ]", None),
        ('[ Big = "' + "é" * 600_000 + '" ]', "Big"),  # counted in bytes, not characters
    ],
)
def test_numbers_the_library_misreads_and_oversized_ads_are_refused(
    text: str, attribute: str | None
) -> None:
    with pytest.raises(classads.ClassAdTooLarge) as info:
        classads.parse_ad(text)
    assert info.value.attribute == attribute


def test_expressions_are_bounded_and_named() -> None:
    with pytest.raises(classads.ClassAdTooLarge, match=r"'Constraint'.*bytes"):
        classads.parse_expr(DEEP, "Constraint")
    with pytest.raises(classads.ClassAdTooLarge, match="operators"):
        classads.parse_expr("+".join(["1"] * 1500))
    limits = classads.AdLimits(max_operators=2)
    assert classads.evaluate(classads.parse_expr("1 + 1 + 1", limits=classads.CEILING), ClassAd())
    with pytest.raises(classads.ClassAdTooLarge):
        classads.parse_expr("1 + 1 + 1 + 1", limits=limits)


@pytest.mark.parametrize("value", [2**70, float("nan"), float("inf"), "x" * (2 << 20)])
def test_ads_from_values_refuse_what_the_library_cannot_hold(value: object) -> None:
    """2**70 raises SystemError inside classad2; NaN would reach JSON answers."""
    with pytest.raises(classads.ClassAdTooLarge) as info:
        classads.ad_from_dict({"Cpus": 1, "Bad": value})
    assert info.value.attribute == "Bad"


def test_what_the_evaluator_cannot_evaluate_is_error_not_an_exception() -> None:
    """Within the bounds, the library's evaluator still gives up on ~400-deep
    trees (ClassAdException) and its reference walk on selection chains
    (ValueError): that is ClassAd Error, a slot that does not match, rank 0."""
    chain = "+".join(["a1"] * 600)
    job = classads.parse_ad(f"[ a1 = 1; Requirements = {chain}; Rank = {chain} ]")
    slot = classads.parse_ad(f"[ Cpus = 1; Start = {chain}; Rank = {chain}; a1 = 1 ]")
    assert classads.eval_attr(job, "Requirements") is classads.ERROR
    assert classads.evaluate(job.lookup("Requirements"), job, slot) is classads.ERROR
    assert classads.job_fits_slot(job, slot) is False
    assert classads.job_fits_slot(classads.parse_ad("[ a1 = 1 ]"), slot) is False
    assert classads.rank(slot, job) == 0.0
    assert classads.constraint_matches(chain, job) is False
    selections = ".".join(["a1"] * 600)
    odd = classads.parse_ad(f"[ a1 = 1; Other = 2; Requirements = {selections} ]")
    assert classads.internal_refs(odd, odd.lookup("Requirements")) is None
    # references unknown: every attribute may matter, so none is left out of the signature
    assert classads.significant_attributes(odd) == ["Other", "Requirements", "a1"]


def test_the_ceiling_is_safe_in_the_real_library() -> None:
    """Text at CEILING (the most any configuration may allow) is parsed,
    printed, matched and walked in a child process without killing it."""
    code = textwrap.dedent("""
        import classad2
        from glidewms import classads
        C = classads.CEILING
        ops = C.max_operators
        for text in ["+".join(["a1"] * (ops + 1)), ".".join(["a1"] * (ops + 1)),
                     "==".join(["a1"] * (ops + 1)),
                     "(" * C.max_nesting + "1" + ")" * C.max_nesting,
                     "{" * C.max_nesting + "}" * C.max_nesting]:
            classads.check_expr(text, "R", C)
            try:
                job = classads.parse_ad("[ Requirements = " + text + "; a1 = 1 ]", C)
            except classads.ClassAdError:
                continue  # the parser's own depth limit: refused, not a crash
            classads.to_text(job)
            classads.to_long(job)
            copy = classad2.ClassAd()
            copy["X"] = job.lookup("Requirements")
            classads.job_fits_slot(job, job)
            classads.rank(job, job)
            classads.signature(job)
            classads.external_refs(job, job.lookup("Requirements"))
        print("survived")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "survived" in run.stdout
