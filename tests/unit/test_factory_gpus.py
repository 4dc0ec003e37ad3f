"""GPU entries: the catalogue makes them visible to frontends (the entry's
``gpus``), and every batch backend asks its batch system for the GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from glidewms.config.factory import EntryConfig
from glidewms.config.frontend import GroupConfig
from glidewms.factory.backends.base import BackendContext
from glidewms.factory.backends.htcondor import submit_description
from glidewms.factory.backends.lsf import LsfBackend
from glidewms.factory.backends.pbs import PbsBackend
from glidewms.factory.backends.script import PilotArray
from glidewms.factory.backends.sge import SgeBackend
from glidewms.factory.backends.slurm import SlurmBackend
from glidewms.factory.catalogue import Catalogue, Overrides, generate, load_catalogue
from glidewms.factory.routes.entries import entry_ad
from glidewms.frontend.matching import JobRequest, jobs_per_pilot
from glidewms.frontend.observe import entry_attributes, entry_size

ARRAY = PilotArray(("--x",), ("g0", "g1"), Path("/t"))
CONTEXT = BackendContext(Path("/s"), Path("/b"))


def gpu_catalogue(gpus: int) -> Catalogue:
    queue = {"name": "gpu", "cores": 8, "memory_mb": 16000, "gpus": gpus, "gpu_model": "T4"}
    ce = {"name": "ce1.example.org", "flavour": "SSH", "endpoint": "ce1", "queues": [queue]}
    return Catalogue.model_validate({"sites": {"S1": {"name": "S1", "ces": [ce]}}})


def test_a_catalogue_gpu_queue_makes_an_entry_whose_ad_a_frontend_sees_gpus_in() -> None:
    flavours = {"SSH": {"backend": "local"}}
    [made] = generate(gpu_catalogue(2), Overrides(flavours=flavours)).entries
    assert made["gpus"] == 2
    # no GLIDEIN_GPUs attribute: on the pilot it would demand N GPUs of validation,
    # and frontends never read it (they match GPUs)
    assert "GLIDEIN_GPUs" not in made["attributes"]
    assert made["attributes"]["GLIDEIN_GPU_Model"] == "T4"
    entry = EntryConfig.model_validate(made)
    ad = entry_ad(entry, {}, None)
    assert ad["gpus"] == 2
    size = entry_size(ad, [], GroupConfig(name="g"))
    assert size.gpus == 2
    assert entry_attributes(ad, "f", size)["GPUs"] == 2
    one_gpu = JobRequest(cpus=1, memory=100, gpus=1)
    assert jobs_per_pilot(one_gpu, size) == 2  # two 1-GPU jobs per pilot there
    cpu_entry = entry_ad(entry.model_copy(update={"gpus": 0}), {}, None)
    assert jobs_per_pilot(one_gpu, entry_size(cpu_entry, [], GroupConfig(name="g"))) == 0


def test_the_shipped_sample_gpu_queues_become_gpu_entries() -> None:
    flavours = {f: {"backend": "local"} for f in ("HTCONDOR-CE", "ARC-CE", "SSH")}
    made = generate(load_catalogue(), Overrides(flavours=flavours)).entries
    gpu = [e for e in made if e.get("gpus")]
    assert gpu and all("GLIDEIN_GPUs" not in e["attributes"] for e in made)


def entry(backend: str, gpus: int, **batch: Any) -> EntryConfig:
    return EntryConfig.model_validate(
        {"name": "e", "site": "S", "backend": backend, "cpus": 4, "gpus": gpus, "batch": batch}
    )


@pytest.mark.parametrize(
    ("backend", "kind", "batch", "line"),
    [
        (SlurmBackend, "slurm", {}, "#SBATCH --gres=gpu:2"),
        (SgeBackend, "sge", {}, "#$ -l gpu=2"),
        (SgeBackend, "sge", {"gpu_complex": "ngpus"}, "#$ -l ngpus=2"),
        (PbsBackend, "pbs", {}, "#PBS -l select=1:ncpus=4:mem=2048mb:ngpus=2"),
        (LsfBackend, "lsf", {}, '#BSUB -gpu "num=2"'),
    ],
)
def test_batch_backends_ask_for_the_entrys_gpus(
    backend: Any, kind: str, batch: dict[str, Any], line: str
) -> None:
    lines = backend(CONTEXT).directives(entry(kind, 2, **batch), ARRAY, "/l")
    assert line in lines
    without = backend(CONTEXT).directives(entry(kind, 0, **batch), ARRAY, "/l")
    assert not any("gpu" in text.lower() for text in without)


def test_htcondor_ce_pilots_request_gpus() -> None:
    def description(gpus: int) -> dict[str, str]:
        e = EntryConfig.model_validate(
            {
                "name": "e",
                "site": "S",
                "backend": "htcondor",
                "gpus": gpus,
                "condor": {"ce_host": "ce.example.org"},
            }
        )
        return submit_description(e, ARRAY, bootstrap=Path("/b/g.sh"), log_dir="/l")

    assert description(2)["request_gpus"] == "2"
    assert "request_gpus" not in description(0)


def test_gpus_per_pilot_are_bounded() -> None:
    with pytest.raises(ValueError, match="gpus"):
        entry("slurm", -1)
    with pytest.raises(ValueError, match="gpus"):
        entry("slurm", 65)
    with pytest.raises(ValueError, match="gpu_complex"):
        entry("sge", 1, gpu_complex="gpu=1 -l x")
