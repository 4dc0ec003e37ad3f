"""`arguments`, `environment` and `getenv`: the two quoting syntaxes of each, and the
import of the submitter's environment.

Old syntax (no leading `"`): arguments split on spaces with `\\"` for a double
quote; environment is `NAME=value;NAME=value` with everything literal. New
syntax: the whole value in `"..."` (inner `"` doubled), words split on white
space, `'...'` groups them (`''` is a literal `'`). Both are stored in the ad
in the new (V2) raw form, `Arguments` and `Environment`.

`getenv = true` copies every variable of the environment `glidewms submit`
runs in; a list (`getenv = PATH, X509*, !SECRET*`) copies the names that match
an entry and no `!` entry (case-insensitive, `*` wildcards), as HTCondor's
`WhiteBlackEnvFilter`. Variables set by `environment` win over copied ones,
and values with a newline are skipped, as condor_submit does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from glidewms.submit.model import SubmitError

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}
Fail = Callable[[str], SubmitError]


def boolean(text: str) -> bool | None:
    low = text.strip().lower()
    return True if low in _TRUE else False if low in _FALSE else None


def parse_arguments(text: str, fail: Fail) -> list[str]:
    if not text.startswith('"'):  # old syntax: spaces separate, \" is a quote
        return [w.replace('\\"', '"') for w in text.split()]
    return split_v2(unquote_v2(text, fail), fail)


def parse_environment(text: str, fail: Fail) -> dict[str, str]:
    if text.startswith('"'):
        entries = split_v2(unquote_v2(text, fail), fail)
    else:  # old syntax: NAME=value;NAME=value, everything literal
        entries = [e.strip() for e in text.split(";") if e.strip()]
    env: dict[str, str] = {}
    for entry in entries:
        name, eq, value = entry.partition("=")
        if not eq or not name or any(c.isspace() for c in name):
            raise fail(f"expected NAME=value, got {entry!r}")
        env[name] = value
    return env


def getenv_filter(text: str) -> tuple[bool, list[re.Pattern[str]], list[re.Pattern[str]]]:
    """(copy anything?, include patterns, exclude patterns) of a getenv value."""
    flag = boolean(text)
    if flag is not None:
        return flag, [], []
    include: list[re.Pattern[str]] = []
    exclude: list[re.Pattern[str]] = []
    for word in re.split(r"[,; \t\r\n]+", text):
        if not word:
            continue
        target = exclude if word.startswith("!") else include
        name = word[1:].strip() if word.startswith("!") else word
        if name:
            target.append(
                re.compile(".*".join(re.escape(p) for p in name.split("*")), re.IGNORECASE)
            )
    return True, include, exclude


def imported(
    text: str, environ: Mapping[str, str], explicit: Mapping[str, str], old_syntax: bool
) -> dict[str, str]:
    """The variables `getenv = text` adds to the job's environment."""
    wanted, include, exclude = getenv_filter(text)
    if not wanted:
        return {}
    out: dict[str, str] = {}
    for name, value in environ.items():
        if not name or name in explicit or "\n" in value:
            continue
        if old_syntax and ";" in value:
            continue  # not expressible in the old syntax; condor_submit drops it too
        if exclude and any(p.fullmatch(name) for p in exclude):
            continue
        if include and not any(p.fullmatch(name) for p in include):
            continue
        out[name] = value
    return out


def unquote_v2(text: str, fail: Fail) -> str:
    """Strip the outer double quotes of the new syntax; `""` inside stands for `"`."""
    inner = text[1:-1]
    if len(text) < 2 or not text.endswith('"') or inner.replace('""', "").count('"'):
        raise fail(
            f'the new syntax needs one "..." with inner double quotes doubled (""), got {text!r}'
        )
    return inner.replace('""', '"')


def split_v2(text: str, fail: Fail) -> list[str]:
    """Split on white space; '...' groups (with '' for a literal quote) and may be empty."""
    words: list[str] = []
    current, started, i = "", False, 0
    while i < len(text):
        c = text[i]
        if c == "'":
            end = i + 1
            while True:
                end = text.find("'", end)
                if end < 0:
                    raise fail(f"unterminated single quote in {text!r}")
                if text.startswith("''", end):
                    end += 2
                    continue
                break
            current, started, i = current + text[i + 1 : end].replace("''", "'"), True, end + 1
        elif c.isspace():
            if started:
                words.append(current)
            current, started, i = "", False, i + 1
        else:
            current, started, i = current + c, True, i + 1
    if started:
        words.append(current)
    return words


def v2_word(word: str) -> str:
    """One word in the new (V2) raw syntax stored in Arguments/Environment."""
    if word and not any(c.isspace() or c == "'" for c in word):
        return word
    return "'" + word.replace("'", "''") + "'"


def v2_arguments(args: list[str]) -> str:
    return " ".join(v2_word(a) for a in args)


def v2_environment(env: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v2_word(v)}" for k, v in env.items())
