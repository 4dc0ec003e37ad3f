"""The `$FUNC(...)` macro functions of the submit language, as HTCondor defines them.

Each follows `evaluate_macro_func` in HTCondor's config.cpp, including its
quirks (`$ENV(X)` of an unset variable is the text `UNDEFINED`; `$INT` and
`$REAL` evaluate their argument as a ClassAd expression; a `$CHOICE` index out
of range is an error). Where HTCondor would only print an error and go on,
we refuse the file: the value would be wrong.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from glidewms import classads
from glidewms.submit.macros import Expander

_INT_FMT = re.compile(r"[^%]*(?:%%[^%]*)*%[-+ #0]*\d*(?:\.\d+)?[diouxXc][^%]*(?:%%[^%]*)*")
_REAL_FMT = re.compile(r"[^%]*(?:%%[^%]*)*%[-+ #0]*\d*(?:\.\d+)?[eEfFgG][^%]*(?:%%[^%]*)*")
_STR_FMT = re.compile(r"[^%]*(?:%%[^%]*)*%-?\d*(?:\.\d+)?s[^%]*(?:%%[^%]*)*")


@dataclass
class FunctionContext:
    """What the functions read besides macros: the submitter's environment,
    a random source, and the directory `$Ff()` makes paths absolute against."""

    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    rng: random.Random = field(default_factory=random.Random)
    cwd: Path = field(default_factory=Path.cwd)

    def __call__(self, x: Expander, func: str, body: str) -> str:
        if func == "ENV":
            name, colon, default = body.partition(":")
            value = self.environ.get(name)
            if value is None:
                return default if colon else "UNDEFINED"
            x.volatile = True  # not part of the file: do not cache across submits
            return x.expand_inner(value, ())
        if func == "RANDOM_CHOICE":
            x.volatile = True
            return self._random_choice(x, body)
        if func == "RANDOM_INTEGER":
            x.volatile = True
            return self._random_integer(x, body)
        if func == "CHOICE":
            return _choice(x, body)
        if func == "SUBSTR":
            return _substr(x, body)
        if func in ("INT", "REAL"):
            return _number(x, func, body)
        if func == "STRING":
            return _string(x, body)
        if func == "EVAL":
            return _eval(x, body)
        return self._filename(x, func, body)

    def _random_choice(self, x: Expander, body: str) -> str:
        entries = body.split(",")
        if len(entries) == 1:
            listed = x.lookup_expanded(entries[0])
            if listed is not None:
                entries = [e for e in re.split(r"[ ,\t\r\n]+", listed) if e]
        if not entries or entries == [""]:
            raise x.error("$RANDOM_CHOICE() has an empty list")
        return self.rng.choice(entries)

    def _random_integer(self, x: Expander, body: str) -> str:
        args = [a.strip() for a in body.split(",")]
        try:
            low = int(args[0])
            high = int(args[1]) if len(args) > 1 and args[1] else None
            step = int(args[2]) if len(args) > 2 and args[2] else 1
        except ValueError:
            raise x.error(f"$RANDOM_INTEGER({body}): expected min,max[,step] integers") from None
        if high is None or step < 1 or low > high:
            raise x.error(f"$RANDOM_INTEGER({body}): expected min <= max and step >= 1")
        return str(low + self.rng.randrange((high - low) // step + 1) * step)

    def _filename(self, x: Expander, func: str, body: str) -> str:
        suffix = None
        if func == "BASENAME" and "," in body:
            body, _, suffix = body.rpartition(",")
            suffix = suffix.lstrip()
        value = x.lookup_expanded(body)
        if value is None:
            value = x.expand_inner(body, ())
        flags = "xn" if func == "BASENAME" else "p" if func == "DIRNAME" else func[1:].lower()
        if "f" in flags:
            x.volatile = True  # relative to the job's initialdir, which may vary per job
        return file_parts(value, flags, self.cwd, suffix)


def _choice(x: Expander, body: str) -> str:
    index_text, _, rest = body.partition(",")
    index_text = index_text.strip()
    index_value = x.lookup_expanded(index_text)
    index = long_param(index_text if index_value is None else index_value)
    if index is None or index < 0:
        raise x.error(f"$CHOICE({body}): {index_text!r} is not a valid index")
    if not rest.strip():
        raise x.error(f"$CHOICE({body}): no list")
    if "," not in rest:
        listed = x.lookup_expanded(rest.strip())
        if listed is None:
            raise x.error(f"$CHOICE({body}): no list named {rest.strip()!r}")
        rest = listed
    items = rest.split(",")
    if index >= len(items):
        raise x.error(f"$CHOICE({body}): index {index} is out of range")
    return items[index].strip()


def _substr(x: Expander, body: str) -> str:
    name, comma, args = body.partition(",")
    if not comma:
        raise x.error(f"$SUBSTR({body}): no start given")
    start_text, comma, length_text = args.partition(",")

    def integer(arg: str) -> int:
        value = x.lookup_expanded(arg)
        number = long_param(arg if value is None else value)
        if number is None:
            raise x.error(f"$SUBSTR({body}): {arg!r} is not an integer")
        return number

    start = integer(start_text)
    length = integer(length_text) if comma else None
    value = x.lookup_expanded(name)
    if value is None:
        return ""
    n = len(value)
    start = min(max(n + start if start < 0 else start, 0), n)
    rest = n - start
    length = rest if length is None else length
    length = min(max(rest + length if length < 0 else length, 0), rest)
    return value[start : start + length]


def _number(x: Expander, func: str, body: str) -> str:
    name, comma, fmt = body.partition(",")
    pattern = _INT_FMT if func == "INT" else _REAL_FMT
    if comma and not pattern.fullmatch(fmt):
        raise x.error(f"${func}({body}): {fmt!r} is not a valid format")
    value = x.lookup_expanded(name)
    text = x.expand_inner(name, ()) if value is None else value
    if func == "INT":
        number = long_param(text)
        if number is None:
            raise x.error(f"$INT({body}): {text!r} does not evaluate to an integer")
        return fmt % number if comma else str(number)
    real = double_param(text)
    if real is None:
        raise x.error(f"$REAL({body}): {text!r} does not evaluate to a real number")
    if not comma:
        return f"{real:.16G}"
    out = fmt % real
    return out if "." in out else out + ".0"


def _string(x: Expander, body: str) -> str:
    name, comma, fmt = body.partition(",")
    if comma and not _STR_FMT.fullmatch(fmt):
        raise x.error(f"$STRING({body}): {fmt!r} is not a valid format")
    value = x.lookup_expanded(name)
    text = x.expand_inner(name, ()) if value is None else value
    try:
        result = classads.parse_expr(text).eval()
        if isinstance(result, str):
            text = result
    except Exception:  # not an expression: the text itself
        pass
    return fmt % text if comma else text


def _eval(x: Expander, body: str) -> str:
    value = x.lookup_expanded(body)
    text = x.expand_inner(body, ()) if value is None else value
    try:
        result = classads.parse_expr(text).eval()
    except Exception:  # HTCondor falls back to the expanded text, if anything was expanded
        return text if text != body else ""
    return unparse_value(result)


def unparse_value(value: object) -> str:
    """A ClassAd value as HTCondor's unparser writes it (strings unquoted)."""
    if isinstance(value, str):
        return value
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is int:
        return str(value)
    if isinstance(value, float):
        text = f"{value:.15G}"
        return text if any(c in text for c in ".EN") else text + ".0"
    name = getattr(value, "name", None)
    if name in ("Undefined", "Error"):
        return name.lower()
    return " ".join(str(value).split())


def long_param(text: str) -> int | None:
    """HTCondor's string_is_long_param: an integer, or an expression that
    evaluates to a number (truncated)."""
    text = text.strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        value = classads.parse_expr(text).eval()
    except Exception:
        return None
    if type(value) in (bool, int, float):  # classad2's Undefined/Error are IntEnum members
        return int(value)
    return None


def double_param(text: str) -> float | None:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        value = classads.parse_expr(text).eval()
    except Exception:
        return None
    return float(value) if type(value) in (int, float) else None


def _unquote(value: str) -> str:
    if len(value) > 1 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _requote(value: str, quote: str) -> str:
    if value and (value[0] == '"' or (quote and value[0] == quote)):
        q = value[0]
        value = value[1:]
        if value.endswith(q):
            value = value[:-1]
    return f"{quote}{value}{quote}" if quote else value


def file_parts(value: str, flags: str, cwd: Path, suffix: str | None = None) -> str:
    """`$F<flags>(name)`: parts of a path (see the condor_submit manual)."""
    parts, dirs = 0, 0
    for c in flags:
        parts |= {"x": 1, "n": 2, "p": 4, "d": 8}.get(c, 0)
        dirs += c == "d"
    quote = ("'" if "a" in flags else '"') if "q" in flags else ""
    bare = "b" in flags
    to_sep = "\\" if "w" in flags else "/" if "u" in flags else ""
    value = _unquote(value)
    if "f" in flags and not value.startswith("/"):
        value = str(cwd).rstrip("/") + "/" + (value[2:] if value.startswith("./") else value)
    buf = _requote(value, quote)
    if to_sep:
        buf = buf.replace("/" if to_sep == "\\" else "\\", to_sep)
    end = len(buf)
    ixn = max(buf.rfind("/"), buf.rfind("\\")) + 1
    dot = buf.rfind(".", ixn)
    ixx = dot if dot >= 0 else end
    if suffix and end - len(suffix) >= ixn and buf[end - len(suffix) :].lower() == suffix.lower():
        ixx, parts = end - len(suffix), parts & ~1
    if not ixn and parts & 3:
        parts &= ~12
    start = 0
    kind = parts & 0xF
    if kind == 1:
        start = ixx + (1 if bare and ixx < end else 0)
    elif kind == 3:
        start = ixn
    elif kind == 2:
        start, end = ixn, ixx
    elif kind == 4:
        end = ixn - 1 if bare and ixn > 0 else ixn
    elif kind == 6:
        end = ixx
    elif kind not in (0, 5, 7):
        if ixn > 0:
            seps = [i + 1 for i, c in enumerate(buf) if c in "/\\"]
            seps = seps[: len(seps) - dirs] if dirs < len(seps) else []
            start = seps[-1] if seps else 0
            if parts & 3 == 2:
                end = ixx
            elif parts & 3 == 0:
                end = ixn - 1 if bare else ixn
        else:
            start = end = min(1, end)
    if not quote:
        return buf[start:end]
    chars = [*buf, "", ""]  # HTCondor edits its buffer in place to add the quotes
    if chars[start] != quote:
        if start == 0:
            chars.insert(0, "")
            end += 1
        else:
            start -= 1
        chars[start] = quote
    if end > 1 and chars[end - 1] == quote:
        end -= 1
    chars[end] = quote
    return "".join(chars[start : end + 1])
