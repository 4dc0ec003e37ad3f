"""ClassAd helpers over the real classad2 library, and the pitfalls they guard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from glidewms import classads


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
