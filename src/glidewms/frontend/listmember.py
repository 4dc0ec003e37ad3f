"""The site test of almost every grid job, decided without the ClassAd library.

`stringListMember(TARGET.GLIDEIN_Site, DESIRED_Sites)` (and its
case-insensitive twin) is the conjunct that makes matching expensive: every
site-restricted autocluster has its own list, so the ClassAd library would be
asked once per (distinct list, site). Its meaning is small and exact, so it
is decided here with one set lookup per listed site, *only* where the answer
is certain to be the library's:

- the conjunct is exactly `stringListMember(TARGET.<entry attr>, <job attr>)`
  (two arguments: default delimiters), `<job attr>` bare or `MY.`-scoped;
- the job defines that attribute as a literal string, ASCII without NUL
  (non-ASCII case folding and NUL are where a hand-written rule could differ);
- the entry's value counts only when it is a string: anything else (a number,
  undefined) never makes the library return true.

Everything else goes to the library. The library splits the list on space,
comma, tab, CR and LF, drops empty items, and compares exactly (or ASCII
case-insensitively for `stringListIMember`); tests/unit/test_frontend_listmember.py
checks this rule against the library on random inputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_PATTERN = re.compile(
    r"^\s*(stringList(I?)Member)\s*\(\s*TARGET\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)\s*,"
    r"\s*(?:MY\s*\.\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$",
    re.IGNORECASE,
)
_DELIMITERS = re.compile(r"[ ,\t\r\n]+")


@dataclass(frozen=True)
class ListMember:
    """A recognised site test: the entry attribute tested, the job's list attribute."""

    entry_attr: str  # lower case, as Matcher keeps entry values
    job_attr: str
    ignore_case: bool


def recognise(text: str) -> ListMember | None:
    """The site test in a conjunct's text, or None when it is anything else."""
    m = _PATTERN.match(text)
    if m is None:
        return None
    return ListMember(m.group(3).lower(), m.group(4), bool(m.group(2)))


def job_list(job: Any, test: ListMember) -> frozenset[str] | None:
    """The items of the job's list, or None when the library must decide."""
    if test.job_attr not in job:
        return None
    value = job[test.job_attr]  # classad2: a literal's Python value, else an ExprTree
    if not isinstance(value, str) or not value.isascii() or "\x00" in value:
        return None
    items = (item for item in _DELIMITERS.split(value) if item)
    if test.ignore_case:
        return frozenset(item.lower() for item in items)
    return frozenset(items)


def entry_key(value: Any, test: ListMember) -> str | None:
    """What an entry's value is looked up as in the job's list; None never matches."""
    if not isinstance(value, str):
        return None
    if test.ignore_case:
        return value.lower() if value.isascii() else None
    return value
