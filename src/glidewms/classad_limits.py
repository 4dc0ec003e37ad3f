"""Bounds on ClassAd text and values, checked before the ClassAd library sees them.

The ClassAd library recurses over an expression's tree to print, copy and
match it, and an expression nested deeply enough (``1+1+...`` with ~40k
terms parses fine) overflows the process stack: the pool dies with SIGSEGV,
and dies again after a restart if the ad is stored. Nothing from outside
(users, pilots, frontends, configuration) may reach ``classad2`` before it
passed these checks; ``glidewms.classads`` calls them in every parser.

The scan is a conservative bound, not a parser: the depth of a parse tree is
at most the number of operators plus the bracket nesting, so counting
operators (runs of operator characters: `>=` and `=?=` are one each) outside
string literals bounds the depth without building anything. The defaults sit
far below the crash (measured: 10k chained operators still print, 40k crash)
and far above real expressions (CMS and OSG Requirements and Start
expressions have tens of operators). The library's evaluator has a lower
depth limit of its own (a chain of ~400 operators evaluates to an exception,
not a crash): evaluation in `glidewms.classads` treats that as ClassAd Error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_OPERATOR_CHARS = frozenset("+-*/%<>=!&|?:^~.")  # "." selects: a.b.c nests too
_OPEN, _CLOSE = frozenset("([{"), frozenset(")]}")
INT64 = 2**63


@dataclass(frozen=True, kw_only=True)
class AdLimits:
    """The bounds; every one is a configuration key of the service that checks it."""

    max_expression_bytes: int = 65536
    max_operators: int = 1000
    max_nesting: int = 64
    max_attributes: int = 512
    max_name_bytes: int = 256
    max_value_bytes: int = 1 << 20  # one attribute, string or expression
    max_ad_bytes: int = 4 << 20
    max_list_items: int = 10000


DEFAULT_LIMITS = AdLimits()


class AdLimitExceeded(ValueError):
    """An expression, value or ad beyond the bounds; names the attribute."""

    def __init__(self, attribute: str | None, reason: str) -> None:
        self.attribute = attribute
        self.reason = reason
        where = f"attribute {attribute!r}: " if attribute else ""
        super().__init__(f"{where}{reason}")


def check_expression(
    text: str, attribute: str | None = None, limits: AdLimits = DEFAULT_LIMITS
) -> None:
    """Refuse expression text whose size or parse depth could exceed the bounds."""
    if not isinstance(text, str):
        raise AdLimitExceeded(attribute, "an expression must be text")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_expression_bytes:
        raise AdLimitExceeded(
            attribute, f"expression of {size} bytes; at most {limits.max_expression_bytes}"
        )
    operators, nesting = _scan(text)
    if operators > limits.max_operators:
        raise AdLimitExceeded(
            attribute, f"expression with {operators} operators; at most {limits.max_operators}"
        )
    if nesting > limits.max_nesting:
        raise AdLimitExceeded(
            attribute, f"expression nested {nesting} deep; at most {limits.max_nesting}"
        )


def check_ad_text(text: str, limits: AdLimits = DEFAULT_LIMITS) -> None:
    """A whole bracketed ad: its size, then the same depth bound as an expression
    (an ad's text is its attributes' expressions plus one level of brackets), with
    the operator budget scaled by the number of attributes it may hold."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_ad_bytes:
        raise AdLimitExceeded(None, f"ad of {size} bytes; at most {limits.max_ad_bytes}")
    operators, nesting = _scan(text)
    if nesting > limits.max_nesting + 1:
        raise AdLimitExceeded(None, f"ad nested {nesting} deep; at most {limits.max_nesting}")
    # `=` and `;` of each attribute are not operators of an expression
    budget = limits.max_operators + 2 * limits.max_attributes
    if operators > budget:
        raise AdLimitExceeded(None, f"ad with {operators} operators; at most {budget}")


def check_value(
    value: Any, attribute: str | None = None, limits: AdLimits = DEFAULT_LIMITS, _depth: int = 0
) -> None:
    """A plain JSON value bound for an ad: finite numbers in 64-bit range,
    bounded strings and lists. (Strings here are ClassAd string literals,
    never parsed as expressions.)"""
    if _depth > limits.max_nesting:
        raise AdLimitExceeded(attribute, f"value nested deeper than {limits.max_nesting}")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -INT64 <= value < INT64:
            raise AdLimitExceeded(attribute, "integer outside the 64-bit range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise AdLimitExceeded(attribute, "number is not finite (NaN or infinity)")
    elif isinstance(value, str):
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > limits.max_value_bytes:
            raise AdLimitExceeded(
                attribute, f"value of {size} bytes; at most {limits.max_value_bytes}"
            )
    elif isinstance(value, (list, tuple)):
        if len(value) > limits.max_list_items:
            raise AdLimitExceeded(
                attribute, f"list of {len(value)} items; at most {limits.max_list_items}"
            )
        for item in value:
            check_value(item, attribute, limits, _depth + 1)
    elif isinstance(value, Mapping):
        check_mapping(value, limits, _depth + 1)
    else:
        raise AdLimitExceeded(attribute, f"unsupported value type {type(value).__name__}")


def check_mapping(
    values: Mapping[str, Any], limits: AdLimits = DEFAULT_LIMITS, _depth: int = 0
) -> None:
    """An ad given as a mapping of attribute names to plain values."""
    if len(values) > limits.max_attributes:
        raise AdLimitExceeded(
            None, f"ad with {len(values)} attributes; at most {limits.max_attributes}"
        )
    for name, value in values.items():
        check_name(name, limits)
        check_value(value, name, limits, _depth)


def check_name(name: Any, limits: AdLimits = DEFAULT_LIMITS) -> None:
    if not isinstance(name, str) or not name:
        raise AdLimitExceeded(None, f"attribute name {name!r} is not a non-empty string")
    if len(name.encode("utf-8", "surrogatepass")) > limits.max_name_bytes:
        raise AdLimitExceeded(name[:40] + "…", f"name longer than {limits.max_name_bytes} bytes")
    if not all(c.isalnum() or c == "_" for c in name) or name[0].isdigit():
        raise AdLimitExceeded(name, "a name is letters, digits and '_', not starting with a digit")


def _scan(text: str) -> tuple[int, int]:
    """(operator characters, deepest bracket nesting) outside string literals
    and quoted attribute names."""
    operators = depth = deepest = 0
    quote: str | None = None
    escaped = in_operator = False
    for ch in text:
        if quote is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch in _OPERATOR_CHARS:
            operators += not in_operator
            in_operator = True
            continue
        in_operator = False
        if ch in ('"', "'"):
            quote = ch
        elif ch in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif ch in _CLOSE:
            depth -= 1
    return operators, deepest
