"""Entries from a CRIC-style catalogue: the shipped sample, the merge order, the diff."""

from __future__ import annotations

from typing import Any

import pytest

from glidewms.config.factory import EntryConfig
from glidewms.config.loader import ConfigError
from glidewms.factory.catalogue import (
    Catalogue,
    Overrides,
    diff_entries,
    entry_name,
    generate,
    load_catalogue,
)

ALL_FLAVOURS = {f: {"backend": "local"} for f in ("HTCONDOR-CE", "ARC-CE", "SSH")}


def test_the_shipped_sample_is_a_few_dozen_sites_and_makes_valid_entries() -> None:
    sample = load_catalogue()
    ces = [ce for s in sample.sites.values() for ce in s.ces]
    assert len(sample.sites) >= 30 and len(ces) >= 40
    assert {ce.flavour for ce in ces} == {"HTCONDOR-CE", "ARC-CE", "SSH"}
    assert any(q.gpus for ce in ces for q in ce.queues)
    made = generate(sample, Overrides(flavours=ALL_FLAVOURS))
    assert len(made.entries) >= 40
    for entry in made.entries:
        EntryConfig.model_validate(entry)
    active = {s.name for s in sample.sites.values() if s.state == "ACTIVE"}
    assert {e["site"] for e in made.entries} <= active
    assert any("state DISABLED" in why for why in made.skipped)
    assert any("state DRAINING" in why for why in made.skipped)


def catalogue(**queue: Any) -> Catalogue:
    return Catalogue.model_validate(
        {
            "sites": {
                "S1": {
                    "name": "S1",
                    "tier_level": 1,
                    "ces": [
                        {
                            "name": "ce1.example.org",
                            "flavour": "HTCONDOR-CE",
                            "endpoint": "ce1.example.org:9619",
                            "queues": [{"name": "q", "cores": 8, "memory_mb": 16000, **queue}],
                        }
                    ],
                }
            }
        }
    )


NAME = "S1_ce1_q"


@pytest.mark.parametrize(
    ("overrides", "key", "expected"),
    [
        ({"defaults": {"cpus": 2, "max_idle": 3}}, "cpus", 8),  # catalogue over defaults
        ({"defaults": {"cpus": 2, "max_idle": 3}}, "max_idle", 3),  # defaults fill in
        ({"entries": {NAME: {"cpus": 4}}}, "cpus", 4),  # overrides over the catalogue
        (
            {"flavours": {"HTCONDOR-CE": {"backend": "slurm", "batch": {"account": "x"}}}},
            "batch",
            {"queue": "q", "account": "x"},
        ),  # flavour merged into the catalogue's
        (
            {"entries": {NAME: {"attributes": {"MINE": 1}}}},
            "attributes",
            {
                "GLIDEIN_CE": "ce1.example.org:9619",
                "GLIDEIN_CE_Flavour": "HTCONDOR-CE",
                "GLIDEIN_Site_Tier": 1,
                "MINE": 1,
            },
        ),
    ],
)
def test_defaults_under_catalogue_under_overrides(
    overrides: dict[str, Any], key: str, expected: Any
) -> None:
    base: dict[str, Any] = {"flavours": {"HTCONDOR-CE": {"backend": "local"}}}
    merged = {**base, **overrides}
    if "flavours" in overrides:
        merged["flavours"] = overrides["flavours"]
    [entry] = generate(catalogue(), Overrides.model_validate(merged)).entries
    assert entry[key] == expected


def arc_catalogue() -> Catalogue:
    data = catalogue().model_dump()
    data["sites"]["S1"]["ces"][0]["flavour"] = "ARC-CE"
    return Catalogue.model_validate(data)


def test_skips_and_drops_say_why() -> None:
    assert generate(arc_catalogue(), Overrides()).skipped == [
        "CE ce1.example.org (S1): ARC-CE: no backend for this flavour (map it under flavours:)"
    ]
    assert generate(catalogue(), Overrides(flavours={"HTCONDOR-CE": None})).skipped == [
        "CE ce1.example.org (S1): HTCONDOR-CE: mapped to null"
    ]
    dropped = generate(catalogue(), Overrides(flavours=ALL_FLAVOURS, entries={NAME: None}))
    assert dropped.entries == [] and dropped.skipped == [f"entry {NAME}: dropped by the overrides"]
    excluded = generate(catalogue(), Overrides(flavours=ALL_FLAVOURS, exclude=["S*"]))
    assert excluded.entries == [] and excluded.skipped == []


def test_a_bad_override_names_the_entry_and_the_key() -> None:
    with pytest.raises(ConfigError, match=rf"(?s)generated entry {NAME}.*max_pilots"):
        generate(catalogue(), Overrides(flavours=ALL_FLAVOURS, entries={NAME: {"max_pilots": -1}}))


def test_entry_names_are_path_safe() -> None:
    made = entry_name("T2_US_UCSD", "osg-ce.t2.ucsd.edu:9619", "grid.q")
    assert made == "T2_US_UCSD_osg-ce_grid-q"
    assert len(entry_name("S" * 60, "ce", "q" * 30)) == 64


def test_diff_says_added_removed_and_changed_keys() -> None:
    old = [{"name": "a", "cpus": 1, "batch": {"queue": "x"}}, {"name": "b", "cpus": 1}]
    new = [{"name": "a", "cpus": 1, "batch": {"queue": "y"}}, {"name": "c", "cpus": 2}]
    diff = diff_entries(old, new)
    assert (diff.added, diff.removed, diff.changed) == (["c"], ["b"], {"a": ["batch.queue"]})
    assert "-    queue: x" in diff.text and "+    queue: y" in diff.text
    assert diff_entries(old, old).empty


@pytest.mark.parametrize(
    ("flavours", "backend", "condor"),
    [
        ({}, "htcondor", {"ce_host": "ce1.example.org", "ce_port": 9619}),  # the default
        (
            {"HTCONDOR-CE": {"condor": {"x509": "/p", "ce_port": 9620}}},
            "htcondor",
            {"ce_host": "ce1.example.org", "ce_port": 9620, "x509": "/p"},
        ),  # merged over it
        ({"HTCONDOR-CE": {"backend": "local"}}, "local", None),  # another backend: no contact
    ],
)
def test_htcondor_ces_map_to_the_htcondor_backend_by_default(
    flavours: dict[str, Any], backend: str, condor: dict[str, Any] | None
) -> None:
    [entry] = generate(catalogue(), Overrides(flavours=flavours)).entries
    assert entry["backend"] == backend and entry.get("condor") == condor
    assert EntryConfig.model_validate(entry).backend == backend
