"""ClassAd helpers over the real classad2 library, and the pitfalls they guard."""

from __future__ import annotations

import pytest

from glidewms import classads


def test_string_list_functions_work():
    """Without `import htcondor2` first, stringListMember silently gives Error."""
    job = classads.parse_ad('[ DESIRED_Sites = "A,B"; '
                            'Requirements = stringListMember(TARGET.GLIDEIN_Site, DESIRED_Sites) ]')
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


@pytest.mark.parametrize(("value", "truth"), [
    (True, True), (False, False), (1, True), (0, False), (2.5, True), ("yes", False)])
def test_truth(value, truth):
    assert classads.is_true(value) is truth


def test_undefined_is_not_true_although_it_is_an_int_enum():
    undefined = classads.parse_expr("TARGET.GPUs >= 1").eval(
        scope=classads.ClassAd(), target=classads.ClassAd())
    assert isinstance(undefined, int)  # the trap: Value is an IntEnum
    assert classads.is_true(undefined) is False
    assert classads.number(undefined) is None


def test_slot_start_is_checked_against_the_job():
    job = classads.parse_ad('[ Owner = "mallory"; Requirements = true ]')
    slot = classads.ad_from_dict({"Cpus": 1})
    slot["Start"] = classads.parse_expr('TARGET.Owner != "mallory"')
    assert not classads.job_fits_slot(job, slot)


def test_autocluster_signature_ignores_insignificant_attributes():
    a = classads.parse_ad('[ RequestCpus = 1; Cmd = "/a"; Site = "X"; '
                          'Requirements = TARGET.Site == MY.Site ]')
    b = classads.parse_ad('[ RequestCpus = 1; Cmd = "/b"; Site = "X"; '
                          'Requirements = TARGET.Site == MY.Site ]')
    c = classads.parse_ad('[ RequestCpus = 1; Cmd = "/a"; Site = "Y"; '
                          'Requirements = TARGET.Site == MY.Site ]')
    assert classads.signature(a)[0] == classads.signature(b)[0]
    assert classads.signature(a)[0] != classads.signature(c)[0]
