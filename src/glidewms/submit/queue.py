"""The `queue` statement: its arguments, its items, and how an item splits into values.

Grammar (HTCondor's `parse_queue_args`):
`queue [count] [vars in|from|matching [files|dirs|any] [slice] items]`, where the
keyword must stand alone (white space or `(` after it), the variables are the
words before it (default `Item`), and whatever precedes them is the count, a
ClassAd expression. Items come from `( ... )` on the line or on the following
lines up to a line starting with `)`, from a file, from `-` (standard input),
from the output of a command (`from cmd |`), or from file globs. A `from` row
splits into as many values as there are variables: at each split the first
of `,`, space or tab ends a value, white space around the split is dropped,
the last variable takes the rest, and missing values are empty (HTCondor's
`split_item`, including the `\\x1f` separator that turns space splitting off).
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from pathlib import Path

from glidewms.submit.functions import long_param
from glidewms.submit.lines import LineReader

_KEYWORDS = ("in", "from", "matching")
_QUALIFIERS = {"files", "dirs", "any", "table"}
_SLICE_RE = re.compile(r"\[\s*(-?\d*)\s*(?::\s*(-?\d*)\s*)?(?::\s*(\d*)\s*)?\]")
_VAR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_TOKEN_SPLIT = re.compile(r"[ ,\t\r\n]+")
RESERVED_VARS = frozenset(
    {
        "cluster",
        "clusterid",
        "process",
        "procid",
        "step",
        "itemindex",
        "row",
        "dollar",
        "jobid",
        "joblistid",
        "node",
    }
)


@dataclass
class QueueArgs:
    count: int
    names: list[str] = field(default_factory=list)  # as written, e.g. ["Item"]
    mode: str | None = None  # None: plain `queue N`
    qualifier: str | None = None  # matching: files / dirs / any
    slice: slice | None = None
    items: list[str] = field(default_factory=list)
    where: str | None = None  # "<": lines that follow; "-": stdin; else a file name
    command: str | None = None  # `from cmd |`: the shell command whose output is the rows


def parse_queue_args(text: str) -> QueueArgs:
    """The parts of a queue line (after `queue`, macros expanded); ValueError why not."""
    text = text.strip()
    if not text:
        return QueueArgs(count=1)
    found = _find_keyword(text)
    if found is None:
        return QueueArgs(count=_count(text))
    start, end, mode = found
    rest = text[end:].lstrip()
    qualifier, slice_ = None, None
    while rest and rest[0] != "(":
        if m := _SLICE_RE.match(rest):
            if slice_ is not None:
                raise ValueError("more than one slice")
            slice_ = _slice(m)
            rest = rest[m.end() :].lstrip()
            continue
        word = re.match(r"[A-Za-z]+(?=[\s(\[]|$)", rest)
        if word is None or word.group(0).lower() not in _QUALIFIERS:
            break
        q = word.group(0).lower()
        if q == "table":
            raise ValueError("'from table' is not supported by glidewms")
        if mode != "matching":
            raise ValueError(f"'{q}' can only follow 'matching'")
        qualifier = q
        rest = rest[word.end() :].lstrip()
    args = QueueArgs(count=1, mode=mode, qualifier=qualifier, slice=slice_)
    if rest.startswith("(") and rest.endswith(")"):
        inner = rest[1:-1]
        args.items = [inner.strip()] if mode == "from" else _tokens(inner)
    elif rest.startswith("("):
        if ")" in rest:
            raise ValueError("unexpected text after ')'")
        first = rest[1:].strip()
        if first:
            args.items = [first] if mode == "from" else _tokens(first)
        args.where = "<"
    elif mode == "from":
        if not rest:
            raise ValueError("'from' needs a file name, '-' or a list in ( )")
        if rest.endswith("|"):
            args.command = rest[:-1].strip()
            if not args.command:
                raise ValueError("'from ... |' needs a command before the '|'")
        else:
            args.where = rest
    else:
        args.items = _tokens(rest)
    head = text[:start].rstrip()
    m = re.search(r"([A-Za-z_.][A-Za-z0-9_.]*(?:[\s,]+[A-Za-z_.][A-Za-z0-9_.]*)*)[\s,]*$", head)
    names_text = m.group(1) if m else ""
    count_text = head[: m.start(1)] if m else head
    args.names = [n for n in re.split(r"[\s,]+", names_text) if n]
    args.count = _count(count_text) if count_text.strip() else 1
    for name in args.names:
        if not _VAR_RE.fullmatch(name) or name.lower() in RESERVED_VARS:
            raise ValueError(f"{name!r} cannot be a queue variable name")
    if mode != "from" and len(args.names) > 1:
        raise ValueError(f"'{mode}' takes exactly one variable name")
    args.names = args.names or ["Item"]
    return args


def _find_keyword(text: str) -> tuple[int, int, str] | None:
    """The first stand-alone `in`/`from`/`matching` (followed by space or `(`)."""
    for m in re.finditer(r"[^\s(]+(?=[\s(])", text):
        word = m.group(0).lower()
        if word in _KEYWORDS:
            return m.start(), m.end(), word
    return None


def _count(text: str) -> int:
    value = long_param(text)
    if value is None or value < 0 or value >= 2**31 - 1:
        raise ValueError(f"expected a job count such as 10, got {text.strip()!r}")
    return value


def _slice(m: re.Match[str]) -> slice:
    parts = [int(p) if p else None for p in m.groups()]
    if parts[2] == 0:
        raise ValueError("a slice step cannot be 0")
    return slice(*parts)


def _tokens(text: str) -> list[str]:
    return [t for t in _TOKEN_SPLIT.split(text) if t]


def add_list_line(args: QueueArgs, line: str) -> None:
    """One line of a `( ... )` list that spans lines (comments already dropped)."""
    if args.mode == "from":
        args.items.append(line)
    else:
        args.items.extend(_tokens(line))


def add_external(args: QueueArgs, text: str, source: str, warn: list[str]) -> None:
    """Rows of a `from` file or of stdin: every logical line is a row, as in
    condor_submit, `#` lines and empty lines included (with a warning)."""
    reader = LineReader(text, source)
    while (line := reader.next()) is not None:
        number, row = line
        if row.startswith("#"):
            warn.append(
                f"{source}:{number}: '{row[:40]}' is queued as an item: condor_submit "
                "does not skip comments in item files"
            )
        args.items.append(row)


def glob_items(args: QueueArgs, base: Path, warn: list[str]) -> None:
    """`matching`: the patterns become the files/dirs they match, in order, each once;
    directories end with `/`. No match is a warning, as in condor_submit."""
    found: list[str] = []
    for pattern in args.items:
        matched = (
            sorted(glob.glob(pattern, root_dir=base))
            if glob.has_magic(pattern)
            else ([pattern] if (base / pattern).exists() else [])
        )
        if not matched:
            warn.append(f"'{pattern}' matches nothing")
        for name in matched:
            is_dir = (base / name).is_dir()
            if (args.qualifier == "files" and is_dir) or (args.qualifier == "dirs" and not is_dir):
                continue
            item = name.rstrip("/") + "/" if is_dir else name
            if item not in found:
                found.append(item)
    args.items = found


def split_row(item: str, columns: int) -> list[str]:
    """A `from` row's values for `columns` variables (HTCondor's split_item)."""
    item = item.rstrip("\r\n")
    seps, ws = ", \t", " \t"
    if "\x1f" in item:
        seps = "\x1f"
    item = item.strip(ws)
    if not item:
        return [""] * columns
    values = [item]
    while len(values) < columns:
        prev = values[-1]
        cut = next((i for i, c in enumerate(prev) if c in seps), -1)
        if cut < 0:
            values.append("")
            continue
        values[-1] = prev[:cut].rstrip(ws)
        values.append(prev[cut + 1 :].lstrip(ws))
    return values
