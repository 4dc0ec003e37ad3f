"""The label cap of /metrics (glidewms/metrics.py): the largest values keep
their names, the rest are summed under `other`, the same way every scrape."""

from __future__ import annotations

import pytest

from glidewms.metrics import OTHER, capped_names, top


@pytest.mark.parametrize(
    ("values", "limit", "expected"),
    [
        ({}, 2, {}),
        ({"a": 1.0}, 2, {"a": 1.0}),
        ({"a": 1.0, "b": 2.0}, 2, {"a": 1.0, "b": 2.0}),
        ({"a": 1.0, "b": 5.0, "c": 3.0}, 2, {"b": 5.0, "c": 3.0, OTHER: 1.0}),
        ({"a": 1.0, "b": 1.0, "c": 1.0}, 1, {"a": 1.0, OTHER: 2.0}),  # ties: first by name
        ({"a": 4.0, "b": 1.0, "c": 1.0, "d": 1.0}, 1, {"a": 4.0, OTHER: 3.0}),
        ({"x": 2.0, "y": 0.0}, 0, {OTHER: 2.0}),
    ],
)
def test_top_keeps_the_largest_and_sums_the_rest(
    values: dict[str, float], limit: int, expected: dict[str, float]
) -> None:
    assert top(values, limit) == expected
    assert sum(top(values, limit).values()) == sum(values.values())


def test_capped_names_fold_other_numbers_like_top() -> None:
    usage = {"alice": 10.0, "bob": 5.0, "carol": 1.0}
    name_of = capped_names(usage, 2)
    assert [name_of(n) for n in ("alice", "bob", "carol", "unknown")] == [
        "alice",
        "bob",
        OTHER,
        OTHER,
    ]
