"""What pilots learn from the frontend and jobs from their submit file, as the
pool hands it over: the frontend's start expression and container requests."""

from __future__ import annotations

import pytest

from glidewms.security.tokens import TokenIssuer
from glidewms.submit import parse_submit
from tests.integration.conftest import bearer
from tests.integration.test_pool_api import SLOT, claim, register, submit

AD = (
    '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 10; {extra} '
    "Requirements = TARGET.Cpus >= RequestCpus ]"
)


@pytest.fixture
def pool_config(pool_config):
    """`Experiment` is declared significant, as an operator would for a slot
    policy that reads it (it is in no job's Requirements)."""
    pool_config.significant_attributes = [*pool_config.significant_attributes, "Experiment"]
    return pool_config


@pytest.fixture
def users(issuer: TokenIssuer) -> tuple[dict[str, str], dict[str, str]]:
    return (
        bearer(issuer.issue("alice", ["user"])),
        bearer(issuer.issue("pilot", ["pilot"], fe="fe1", group="main")),
    )


def test_frontend_start_expression_becomes_the_slot_start(pool, users):
    alice, pilot = users
    [cms] = submit(pool, alice, ad=AD.format(extra='Experiment = "cms";'))
    picky = register(pool, pilot, {**SLOT, "GLIDEIN_Start": 'TARGET.Experiment =?= "atlas"'})
    assert claim(pool, pilot, picky).status_code == 204
    open_ = register(pool, pilot, {**SLOT, "GLIDEIN_Start": 'TARGET.Experiment =?= "cms"'})
    r = claim(pool, pilot, open_)
    assert r.status_code == 200 and r.json()["job_id"] == cms


def test_a_broken_start_expression_takes_no_jobs(pool, users):
    alice, pilot = users
    submit(pool, alice, ad=AD.format(extra=""))
    broken = register(pool, pilot, {**SLOT, "GLIDEIN_Start": "TARGET.Cpus >"})
    assert claim(pool, pilot, broken).status_code == 204


@pytest.mark.parametrize(
    ("extra", "container"),
    [
        ('ContainerImage = "/images/el9";', {"image": "/images/el9", "kind": "sandbox"}),
        ('SingularityImage = "/cvmfs/img/el8";', {"image": "/cvmfs/img/el8", "kind": "sandbox"}),
        (
            'ContainerImage = "el9.sif"; WantSIF = true; ContainerImageSource = "cedar";',
            {"image": "el9.sif", "kind": "sif", "in_sandbox": True},
        ),
        ("WantContainer = true;", {"image": ""}),
        ("", None),
    ],
)
def test_container_request_reaches_the_pilot(pool, users, extra, container):
    alice, pilot = users
    submit(pool, alice, ad=AD.format(extra=extra))
    job = claim(pool, pilot, register(pool, pilot)).json()["job"]
    assert job.get("container") == container


def test_submit_container_image_sets_the_attribute(tmp_path):
    job = parse_submit(
        "executable = /bin/true\ntransfer_executable = false\n"
        "container_image = /images/el9\nqueue\n",
        "c.sub",
        tmp_path,
    ).jobs[0]
    assert job.attrs["ContainerImage"] == '"/images/el9"'
