"""ClassAd helpers over the real library (`classad2` from the htcondor wheel).

Everything that parses or evaluates a ClassAd goes through here, so the one
pitfall that silently breaks matchmaking (HTCondor's functions such as
`stringListMember` evaluate to Error unless `htcondor2` was imported first)
is handled in exactly one place. So is the choice of HTCondor configuration
the bindings read (`import_htcondor`): other modules that need `htcondor2`
or `classad2` import this one, or call `import_htcondor`, first.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from glidewms import classad_scan
from glidewms.classad_limits import DEFAULT_LIMITS, AdLimitExceeded, AdLimits, check_mapping


def htcondor_config_files(home: Path, as_root: bool) -> list[Path]:
    """Where HTCondor looks for its configuration when ``CONDOR_CONFIG`` is
    unset, in its order (``find_global`` in HTCondor's condor_config.cpp):
    the user's own ``~/.condor/`` first, except for root, then the system's."""
    system = [
        Path("/etc/condor/condor_config"),
        Path("/usr/local/etc/condor_config"),
        Path(os.path.expanduser("~condor/condor_config")),
    ]  # unexpanded: no such user
    return system if as_root else [home / ".condor" / "condor_config", *system]


def import_htcondor() -> ModuleType:
    """Import ``htcondor2`` with this host's HTCondor configuration, if it has one.

    Without any configuration HTCondor complains, so it is pointed at an empty
    one (``CONDOR_CONFIG=/dev/null``), but only then: where HTCondor is
    installed, its configuration is what locates a schedd (the htcondor
    factory backend), and the ``condor_*`` commands started from here inherit
    ``CONDOR_CONFIG``; setting ``/dev/null`` unconditionally would make both
    use an empty configuration. A ``CONDOR_CONFIG`` already set is never
    touched, and a system configuration is left for HTCondor to find. A
    user's ``~/.condor/condor_config`` is named in ``CONDOR_CONFIG``: HTCondor
    finds it, but ``htcondor2``'s own check at import does not look there and
    would put ``/dev/null`` in its place.

    Call this before anything imports ``htcondor2`` or ``classad2`` (the
    configuration is read once, at the first import); importing this module
    does.
    """
    if "CONDOR_CONFIG" not in os.environ:
        home = Path(os.path.expanduser("~"))
        found = [p for p in htcondor_config_files(home, os.geteuid() == 0) if p.is_file()]
        if not found:
            os.environ["CONDOR_CONFIG"] = "/dev/null"
        elif found[0].is_relative_to(home / ".condor"):
            os.environ["CONDOR_CONFIG"] = str(found[0])
    import htcondor2

    return htcondor2


import_htcondor()  # before classad2 is used: see the module docstring
import classad2  # noqa: E402

ClassAd = classad2.ClassAd
ExprTree = classad2.ExprTree

# Attributes that always decide whether a job fits a slot; together with the
# job attributes its Requirements reference they form the autocluster signature.
BASE_SIGNIFICANT = (
    "Requirements",
    "Rank",
    "RequestCpus",
    "RequestMemory",
    "RequestDisk",
    "RequestGPUs",
    "JobUniverse",
)


class ClassAdError(ValueError):
    """Text that is not a valid ClassAd or ClassAd expression."""


class ClassAdTooLarge(ClassAdError, AdLimitExceeded):
    """Text or values past the bounds (`glidewms.classad_limits`), refused
    before the library saw them; `attribute` names where, when known."""


# The most any configuration may allow (the pool's limits are validated
# against it), and the bounds stored text is read back with: far inside what
# the library survives (tests/unit/test_classads.py runs them in a child).
CEILING = AdLimits(
    max_expression_bytes=4 << 20,
    max_operators=10_000,
    max_nesting=1_000,
    max_attributes=100_000,
    max_name_bytes=4096,
    max_value_bytes=64 << 20,
    max_ad_bytes=256 << 20,
    max_list_items=1_000_000,
)

# What the library raises on trees too deep for its evaluator (a chain of
# ~400 operators, or of attribute references): ClassAd Error, never a crash.
LIBRARY_ERRORS = (classad2.ClassAdException, ValueError, RuntimeError, SystemError)
ERROR = classad2.Value.Error
UNDEFINED = classad2.Value.Undefined


def parse_ad(text: str, limits: AdLimits = DEFAULT_LIMITS) -> classad2.ClassAd:
    """Parse a bracketed (new-syntax) ClassAd; refuse anything else.

    The text is held against `limits` first (ClassAdTooLarge names the
    attribute). The unbracketed old syntax can misparse silently, so it is
    not accepted; and `classad2.parseOne` returns an *empty ad* for broken
    text such as `[ A = ]`, so the strict `ClassAd(text)` constructor is used.
    """
    stripped = text.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        raise ClassAdError("a ClassAd must be written in brackets: [ Attr = value; ... ]")
    check_ad(stripped, limits)
    try:
        return classad2.ClassAd(stripped)
    except Exception as exc:  # classad2 raises its own ClassAdException
        raise ClassAdError(f"not a valid ClassAd: {exc}") from None


def parse_expr(
    text: str, attribute: str | None = None, limits: AdLimits = DEFAULT_LIMITS
) -> classad2.ExprTree:
    """Parse one whole expression (of `attribute`, for the messages).

    `classad2.ExprTree("a; B = 1")` silently stops at the `;` (and a `]` ends an
    ad early), so the text is parsed between two sentinel attributes of a probe
    ad: anything that adds or hides an attribute is refused.
    """
    check_expr(text, attribute, limits)
    try:
        probe = classad2.ClassAd(f"[ {_PROBE} = {text}; {_END} = 0 ]")
    except Exception:
        raise ClassAdError(
            f"{_where(attribute)}not a valid ClassAd expression: {_quote(text)}"
        ) from None
    if set(probe.keys()) != {_PROBE, _END}:
        raise ClassAdError(f"{_where(attribute)}not a single ClassAd expression: {_quote(text)}")
    return probe.lookup(_PROBE)


_PROBE, _END = "glidewms_probe__", "glidewms_probe_end__"


def ad_from_dict(values: Mapping[str, Any], limits: AdLimits = DEFAULT_LIMITS) -> classad2.ClassAd:
    """Build an ad from plain JSON values (str, int, float, bool, lists of those),
    held against `limits` first (strings stay string literals: never parsed)."""
    try:
        check_mapping(values, limits)
    except AdLimitExceeded as exc:
        raise ClassAdTooLarge(exc.attribute, exc.reason) from None
    try:
        return classad2.ClassAd(dict(values))
    except Exception as exc:
        raise ClassAdError(f"not a valid ClassAd: {exc}") from None


def check_ad(text: str, limits: AdLimits = DEFAULT_LIMITS) -> None:
    """Hold a bracketed ad's text against `limits` (ClassAdTooLarge naming the
    attribute): see `glidewms.classad_scan`."""
    try:
        classad_scan.bound_ad(text, limits)
    except AdLimitExceeded as exc:
        raise ClassAdTooLarge(exc.attribute, exc.reason) from None


def check_expr(text: str, attribute: str | None = None, limits: AdLimits = DEFAULT_LIMITS) -> None:
    """Hold one expression's text against `limits` (ClassAdTooLarge naming
    `attribute`): see `glidewms.classad_scan`."""
    if not isinstance(text, str):
        raise ClassAdError(f"{_where(attribute)}an expression must be text")
    try:
        classad_scan.bound_expression(text, attribute, limits)
    except AdLimitExceeded as exc:
        raise ClassAdTooLarge(exc.attribute, exc.reason) from None


def _where(attribute: str | None) -> str:
    return f"attribute {attribute!r}: " if attribute else ""


def _quote(text: str, most: int = 200) -> str:
    """Outside text in a message, cut short: a refusal must not echo megabytes."""
    return repr(text) if len(text) <= most else repr(text[:most]) + f"… ({len(text)} characters)"


def to_text(ad: classad2.ClassAd) -> str:
    """One-line bracketed form: what we store and send."""
    parts = [f"{name} = {ad.lookup(name)}" for name in sorted(ad.keys())]
    return "[ " + "; ".join(parts) + " ]"


def to_long(ad: classad2.ClassAd) -> str:
    """The `condor_q -l` form, attributes sorted."""
    return "\n".join(f"{name} = {ad.lookup(name)}" for name in sorted(ad.keys()))


def evaluate(
    expr: str | classad2.ExprTree, ad: classad2.ClassAd, target: classad2.ClassAd | None = None
) -> Any:
    """The expression's value in `ad` (against `target`); ClassAd Error when the
    library cannot evaluate it (a tree too deep for its evaluator)."""
    tree = parse_expr(expr) if isinstance(expr, str) else expr
    try:
        if target is None:
            return tree.eval(scope=ad)
        return tree.eval(scope=ad, target=target)
    except LIBRARY_ERRORS:
        return ERROR


def eval_attr(ad: classad2.ClassAd, name: str) -> Any:
    """The value of attribute `name` of `ad`: None when absent, ClassAd Error
    when the library cannot evaluate it."""
    if name not in ad:
        return None
    try:
        return ad.eval(name)
    except LIBRARY_ERRORS:
        return ERROR


def is_true(value: Any) -> bool:
    """ClassAd truth: only the boolean true (or a non-zero number) counts."""
    if value is True:
        return True
    if isinstance(value, (bool, classad2.Value)):  # Value.Undefined/Error are IntEnums!
        return False
    return isinstance(value, (int, float)) and value != 0


def constraint_matches(constraint: str | classad2.ExprTree, ad: classad2.ClassAd) -> bool:
    return is_true(evaluate(constraint, ad))


def job_fits_slot(job: classad2.ClassAd, slot: classad2.ClassAd) -> bool:
    """Both ways: the job's Requirements against the slot and the slot's Start
    (or Requirements) against the job. A missing expression means true; one
    the library cannot evaluate means no match."""
    req = job.lookup("Requirements") if "Requirements" in job else None
    if req is not None and not is_true(evaluate(req, job, slot)):
        return False
    for name in ("Start", "Requirements"):
        if name in slot:
            return is_true(evaluate(slot.lookup(name), slot, job))
    return True


def number(value: Any) -> float | int | None:
    """A ClassAd result as a number, or None for booleans, Undefined and Error."""
    if isinstance(value, (bool, classad2.Value)) or not isinstance(value, (int, float)):
        return None
    return value


def rank(expr_owner: classad2.ClassAd, other: classad2.ClassAd) -> float:
    """Evaluate `Rank` of one ad against the other; undefined, error or not
    finite ranks 0."""
    if "Rank" not in expr_owner:
        return 0.0
    value = evaluate(expr_owner.lookup("Rank"), expr_owner, other)
    if value is True:
        return 1.0
    found = float(number(value) or 0)
    return found if math.isfinite(found) else 0.0


def internal_refs(ad: classad2.ClassAd, expr: Any) -> set[str] | None:
    """Names `expr` reads from `ad` itself; None when the library cannot tell."""
    if not isinstance(expr, classad2.ExprTree):
        return set()
    try:
        return set(ad.internalRefs(expr))
    except LIBRARY_ERRORS:
        return None


def external_refs(ad: classad2.ClassAd, expr: Any) -> set[str] | None:
    """Names `expr` reads from outside `ad`; None when the library cannot tell."""
    if not isinstance(expr, classad2.ExprTree):
        return set()
    try:
        return set(ad.externalRefs(expr))
    except LIBRARY_ERRORS:
        return None


def significant_attributes(job: classad2.ClassAd, extra: Iterable[str] = ()) -> list[str]:
    """The job attributes that can change a match: the base set, the declared
    `extra` ones (what slot Start expressions may read), and every job
    attribute its Requirements and Rank reference (all of them, when the
    library cannot say which)."""
    names = {n for n in (*BASE_SIGNIFICANT, *extra) if n in job}
    for expr_name in ("Requirements", "Rank"):
        if expr_name in job:
            refs = internal_refs(job, job.lookup(expr_name))
            names.update(job.keys() if refs is None else refs)
    return sorted(n for n in names if n in job)


def signature(job: classad2.ClassAd, extra: Iterable[str] = ()) -> tuple[str, str]:
    """(autocluster key, ad text of the significant attributes).

    Jobs with equal keys match exactly the same slots, so matching is done once
    per autocluster instead of once per job.
    """
    sig = classad2.ClassAd()
    for name in significant_attributes(job, extra):
        sig[name] = job.lookup(name)
    text = to_text(sig)
    return hashlib.sha256(text.encode()).hexdigest()[:24], text


def merge(base: classad2.ClassAd, extra: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
    items = extra.items() if isinstance(extra, Mapping) else extra
    for name, value in items:
        base[name] = value
