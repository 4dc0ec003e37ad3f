"""The site each entry's pilot token is scoped to (`entry_sites`): the one site
the factories offering the entry agree on, or none."""

from __future__ import annotations

from glidewms.frontend.credentials import entry_sites


def test_each_requested_entry_gets_its_factories_site_when_they_agree() -> None:
    fa = [{"name": "a", "site": "SA"}, {"name": "b", "site": "SB"}, {"name": "x", "site": "SX"}]
    fb = [{"name": "b", "site": "SB"}, {"name": "c", "site": "SC1"}]
    fc = [{"name": "c", "site": "SC2"}, {"name": "d"}, "not an ad"]
    sites = entry_sites([(fa, ["a", "b"]), (fb, ["b", "c"]), (fc, ["c", "d", "e"])])
    assert sites == {
        "a": "SA",
        "b": "SB",  # two factories, one site
        "c": None,  # two factories, two sites: scoped to the entry only
        "d": None,  # no site in its ad
        "e": None,  # requested, but in no ad
    }


def test_entries_not_requested_get_no_token() -> None:
    assert entry_sites([([{"name": "x", "site": "SX"}], [])]) == {}
