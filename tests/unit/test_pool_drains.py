"""Which pilots a drain covers (pool/drains.py): by id, by the slot's entry or
site, else by the token's."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from glidewms.pool.drains import Target, covering


def pilot(pid: str = "p1", token_entry: Any = None, token_site: Any = None, **slot: Any) -> Any:
    return SimpleNamespace(pilot_id=pid, slot=slot, token_entry=token_entry, token_site=token_site)


@pytest.mark.parametrize(
    ("target", "row", "covered"),
    [
        (Target("pilot", "p1"), pilot("p1"), True),
        (Target("pilot", "p1"), pilot("p2"), False),
        (Target("entry", "e1"), pilot(GLIDEIN_Entry_Name="e1"), True),
        (Target("entry", "e1"), pilot(GLIDEIN_Entry_Name="e2"), False),
        (Target("entry", "e1"), pilot(token_entry="e1"), True),  # no slot attribute
        (Target("entry", "e1"), pilot(token_entry="e1", GLIDEIN_Entry_Name="e2"), False),
        (Target("site", "S"), pilot(GLIDEIN_Site="S"), True),
        (Target("site", "S"), pilot(GLIDEIN_Site=7, token_site="S"), True),  # not text
        (Target("site", "S"), pilot(GLIDEIN_Entry_Name="S"), False),
        (Target("site", "S"), pilot(), False),
    ],
)
def test_a_target_covers_the_pilots_it_names(target: Target, row: Any, covered: bool) -> None:
    assert target.covers(row) is covered


def test_covering_finds_any_drain_that_still_holds() -> None:
    drains = [SimpleNamespace(kind="site", name="S"), SimpleNamespace(kind="entry", name="e1")]
    assert covering(drains, pilot(GLIDEIN_Entry_Name="e1", GLIDEIN_Site="X")) is drains[1]
    assert covering(drains, pilot(GLIDEIN_Entry_Name="e2", GLIDEIN_Site="X")) is None


def test_a_drain_is_of_a_pilot_an_entry_or_a_site() -> None:
    with pytest.raises(ValueError, match="not 'node'"):
        Target("node", "n1")
