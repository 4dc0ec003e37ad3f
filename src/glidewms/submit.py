"""HTCondor-style submit descriptions -> job ClassAds, checked before anything is queued.

Users bring the submit files they already write for condor_submit; this module turns
one into a list of jobs, or raises `SubmitError` naming the file and line, so the
caller queues all of the jobs or none. It is pure (no network, no schedd): it reads
only the files the description names (executable, inputs, `queue ... from` lists).

Where HTCondor is lenient in ways that silently produce wrong jobs, we are strict:
an undefined `$(macro)` is an error (HTCondor expands it to nothing), a key that looks
like a misspelt command is an error (HTCondor keeps it as an unused macro), commands
after the last `queue` are an error (HTCondor ignores them), and so are HTCondor
commands glidewms cannot honour (other universes, getenv, docker_image, ...).
`$(Item)` is an error, not an empty string, when the job's queue statement sets no
`Item` (plain `queue N`, or a list with its own variable names).

The cluster id is unknown while parsing, so `$(Cluster)`/`$(ClusterId)` become the
literal `$(ClusterId)` until the caller calls `JobDescription.with_cluster(id)`.

This module is about 780 lines, over the usual ~500, because the submit language has
that many corners (two argument and two environment syntaxes, five queue forms, macros
and their built-ins, ClassAd validation); splitting it would scatter one grammar over
several files. Parsing never runs or imports HTCondor's own submit code.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("CONDOR_CONFIG", "/dev/null")  # silence "no condor_config" chatter

import classad2
import htcondor2  # noqa: F401  (must be imported before classad2 is used; see notes §7)

CLUSTER_PLACEHOLDER = "$(ClusterId)"
"""What `$(Cluster)`/`$(ClusterId)` expand to until `JobDescription.with_cluster`."""

DEFAULT_REQUEST_CPUS = 1
DEFAULT_REQUEST_MEMORY_MIB = 128
DEFAULT_REQUEST_DISK_KIB = 102400  # 100 MiB: a modest sandbox; condor_submit's own default varies
VANILLA_UNIVERSE = 5

_KIB = {"k": 1, "m": 1024, "g": 1024**2, "t": 1024**3}  # unit multipliers, in KiB
_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(?:i?b)?)?", re.IGNORECASE)
_IDENT_RE = re.compile(r"[A-Za-z_]\w*")
_ASSIGN_RE = re.compile(r"([+]?[A-Za-z_][\w.]*)\s*=(.*)", re.DOTALL)
_QUEUE_RE = re.compile(r"queue(?![\w.])(?!\s*=)(.*)", re.IGNORECASE | re.DOTALL)
_KEYWORD_RE = re.compile(r"(?<![\w.])(in|from|matching)(?![\w.])", re.IGNORECASE)
_SLICE_RE = re.compile(r"\[\s*(-?\d*)\s*(?::\s*(-?\d*)\s*)?(?::\s*(\d*)\s*)?\]")
# `$(name)`, `$(name:default)`, `$Fnx(name)`, `$ENV(X)`; `$$(...)` is matched to be skipped.
_MACRO_RE = re.compile(r"\$(\$|[A-Za-z]\w*)?\(([^()]*)\)")
_CLUSTER_REF_RE = re.compile(r"(?<!\$)\$\(ClusterId\)")
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}

# Submit commands we interpret. Everything else is a user macro (or a typo of these).
_KNOWN = {
    "executable", "arguments", "environment", "transfer_input_files",
    "transfer_output_files", "output", "error", "log", "input", "initialdir",
    "request_cpus", "request_memory", "request_disk", "request_gpus",
    "requirements", "rank", "priority", "universe", "should_transfer_files",
    "when_to_transfer_output", "transfer_executable", "getenv", "accounting_group",
    "accounting_group_user", "periodic_hold", "periodic_remove", "periodic_release",
    "periodic_hold_reason", "periodic_hold_subcode", "on_exit_hold", "on_exit_remove",
    "max_retries", "job_max_vacate_time", "batch_name", "description",
    "notification", "notify_user",
}
_ALIASES = {
    "requestcpus": "request_cpus", "requestmemory": "request_memory",
    "requestdisk": "request_disk", "requestgpus": "request_gpus",
    "initial_dir": "initialdir", "jobbatchname": "batch_name",
}
# Real condor_submit commands whose meaning glidewms cannot provide: refuse, never ignore.
_UNSUPPORTED = {
    "docker_image", "transfer_output_remaps", "output_destination",
    "stream_output", "stream_error", "hold", "leave_in_queue", "remote_initialdir",
    "run_as_owner", "x509userproxy", "use_x509userproxy", "max_materialize",
    "deferral_time", "next_job_start_delay",
}
_EXPR_KEYS = {  # submit command -> attribute holding a ClassAd expression
    "rank": "Rank", "periodic_hold": "PeriodicHold", "periodic_remove": "PeriodicRemove",
    "periodic_release": "PeriodicRelease", "periodic_hold_reason": "PeriodicHoldReason",
    "periodic_hold_subcode": "PeriodicHoldSubCode", "on_exit_hold": "OnExitHold",
    "on_exit_remove": "OnExitRemove", "job_max_vacate_time": "JobMaxVacateTime",
}
_STRING_KEYS = {
    "accounting_group": "AcctGroup", "accounting_group_user": "AcctGroupUser",
    "batch_name": "JobBatchName", "description": "JobDescription",
    "container_image": "ContainerImage",  # run the job in this image (pilot's runtime)
}
# Attributes a `+Attr` may not set, with the command that sets them properly.
_RESERVED = {
    "cmd": "executable", "arguments": "arguments", "args": "arguments",
    "environment": "environment", "env": "environment", "iwd": "initialdir",
    "in": "input", "out": "output", "err": "error", "userlog": "log",
    "transferinput": "transfer_input_files", "transferoutput": "transfer_output_files",
    "transferexecutable": "transfer_executable", "jobuniverse": "universe",
    "shouldtransferfiles": "should_transfer_files", "jobprio": "priority",
    "whentotransferoutput": "when_to_transfer_output", "requirements": "requirements",
    "requestcpus": "request_cpus", "requestmemory": "request_memory",
    "requestdisk": "request_disk", "requestgpus": "request_gpus", "maxretries": "max_retries",
    "clusterid": "", "procid": "",  # assigned by glidewms
    **{attr.lower(): key for key, attr in {**_EXPR_KEYS, **_STRING_KEYS}.items()},
}
_BUILTINS = {"cluster", "clusterid", "process", "procid", "step", "itemindex", "row", "dollar"}


class SubmitError(Exception):
    """A submit description that must not be queued; `str()` is `source:line: message`."""

    def __init__(self, message: str, source: str = "<submit>", line: int | None = None):
        self.source, self.line, self.message = source, line, message
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class JobDescription:
    """One job: its ClassAd attributes plus the parsed pieces the pilot side needs."""

    attrs: dict[str, str]  # attribute -> ClassAd expression source text
    args: list[str]
    env: dict[str, str]
    executable: Path | None  # local file to transfer; None when transfer_executable=false
    inputs: list[Path]  # local files/directories to transfer (incl. the `input` stdin file)
    out: str | None
    err: str | None
    transfer_output: list[str] | None  # None: HTCondor's "all new files in the sandbox"
    proc_id: int
    iwd: Path = field(default_factory=Path.cwd)

    def ad_text(self) -> str:
        """The bracketed ClassAd (parseable by `classad2.parseOne` once no expression
        still holds the cluster placeholder, i.e. always after `with_cluster`)."""
        return "[ " + "".join(f"{k} = {v}; " for k, v in self.attrs.items()) + "]"

    def with_cluster(self, cluster_id: int) -> JobDescription:
        """The job once the schedd has assigned its cluster: placeholder replaced."""
        sub = _CLUSTER_REF_RE.sub

        def fill(text: str) -> str:
            return sub(str(cluster_id), text)

        attrs = {k: fill(v) for k, v in self.attrs.items()}
        attrs["ClusterId"] = str(cluster_id)
        return dataclasses.replace(
            self, attrs=attrs, args=[fill(a) for a in self.args],
            env={k: fill(v) for k, v in self.env.items()},
            out=None if self.out is None else fill(self.out),
            err=None if self.err is None else fill(self.err),
            transfer_output=None if self.transfer_output is None
            else [fill(t) for t in self.transfer_output],
        )


@dataclass(frozen=True)
class SubmitDescription:
    jobs: list[JobDescription]
    source: str


@dataclass(frozen=True)
class _Assign:
    key: str  # as written (for `+Attr`/`MY.Attr`: the attribute name)
    value: str
    line: int


@dataclass
class _Queue:
    line: int
    count: int
    names: list[str]  # lower-case queue variable names
    items: list[list[str]] | None  # None: plain `queue [N]`
    macros: dict[str, _Assign]  # the commands in force at this statement


# ---------------------------------------------------------------- public entry points


def load_submit(path: Path) -> SubmitDescription:
    """Parse a submit file; relative paths in it are relative to its directory."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SubmitError(f"cannot read submit file: {exc}", str(path)) from None
    return parse_submit(text, str(path), path.resolve().parent)


def parse_submit(
    text: str, source: str = "<submit>", base_dir: Path | None = None
) -> SubmitDescription:
    """Parse submit-description text into jobs; any problem raises `SubmitError`.

    `base_dir` is what condor_submit's current directory would be (default: the cwd);
    `initialdir`, the executable, inputs and `queue ... from/matching` resolve against it.
    """
    parser = _Parser(source, Path(base_dir or Path.cwd()).resolve())
    parser.read(text)
    return SubmitDescription(jobs=parser.build(), source=source)


# ---------------------------------------------------------------- reading statements


class _Parser:
    def __init__(self, source: str, base_dir: Path):
        self.source, self.base_dir = source, base_dir
        self.macros: dict[str, _Assign] = {}  # lower-case key -> last assignment
        self.queues: list[_Queue] = []
        self.after_queue: _Assign | None = None  # first command after the latest queue
        self.assigns: list[tuple[str, _Assign]] = []
        self._checked: dict[str, str | None] = {}  # expression -> error (None: valid)
        self._exists: dict[Path, bool] = {}

    def error(self, message: str, line: int | None) -> SubmitError:
        return SubmitError(message, self.source, line)

    def read(self, text: str) -> None:
        lines = iter(_logical_lines(text))
        for lineno, line in lines:
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if m := _QUEUE_RE.fullmatch(stripped):
                self.queues.append(self._queue(m.group(1).strip(), lineno, lines))
                self.after_queue = None
            elif m := _ASSIGN_RE.fullmatch(stripped):
                self._assign(m.group(1), m.group(2).strip(), lineno)
            else:
                word = stripped.split()[0].lower()
                if word in {"if", "elif", "else", "endif", "include", "error", "warning"}:
                    raise self.error(f"'{word}' statements are not supported", lineno)
                raise self.error(
                    f"expected 'key = value', a comment or a queue statement, got {stripped!r}",
                    lineno,
                )
        if not self.queues:
            raise self.error("no queue statement: add 'queue' to submit the job", None)
        if self.after_queue is not None:
            raise self.error(
                f"{self.after_queue.key}: statements after the last queue are ignored by "
                "HTCondor; move them above it", self.after_queue.line,
            )
        self._check_typos()

    def _assign(self, key: str, value: str, line: int) -> None:
        lower = key.lower()
        if lower.startswith(("+", "my.")):
            attr = key[1:] if key.startswith("+") else key[3:]
            if not _IDENT_RE.fullmatch(attr):
                raise self.error(f"{key}: not a valid ClassAd attribute name", line)
            if (how := _RESERVED.get(attr.lower())) is not None:
                raise self.error(f"{key}: " + (f"set {attr} with the '{how}' command" if how
                                               else f"{attr} is assigned by glidewms"), line)
            key, lower = attr, "my." + attr.lower()
        elif "." in key:
            raise self.error(f"{key}: not a valid submit command or macro name", line)
        else:
            lower = _ALIASES.get(lower, lower)
            if lower in _UNSUPPORTED:
                raise self.error(f"{key}: this HTCondor command is not supported", line)
        if previous := self.macros.get(lower):  # `foo = $(foo) more` extends the old value
            value = re.sub(rf"\$\({re.escape(lower)}\)", lambda _: previous.value, value,
                           flags=re.IGNORECASE)
        assign = _Assign(key, value, line)
        if value:
            self.macros[lower] = assign
        else:  # an empty value unsets, as in condor_submit
            self.macros.pop(lower, None)
        self.assigns.append((lower, assign))
        if self.after_queue is None:
            self.after_queue = assign

    def _check_typos(self) -> None:
        """A key nobody uses as `$(key)` that is one typo away from a command is a typo."""
        used = {
            m.group(2).partition(":")[0].strip().lower()
            for _, a in self.assigns for m in _MACRO_RE.finditer(a.value)
        } | {n for q in self.queues for n in q.names}
        for lower, assign in self.assigns:
            if lower in _KNOWN or lower.startswith("my.") or lower in used:
                continue
            close = difflib.get_close_matches(lower, sorted(_KNOWN), n=1, cutoff=0.8)
            if close:
                raise self.error(
                    f"unknown command {assign.key!r}; did you mean {close[0]!r}?", assign.line
                )

    # ------------------------------------------------------------ queue statements

    def _queue(self, rest: str, line: int, lines: Iterator[tuple[int, str]]) -> _Queue:
        rest = _Expander(self, self.macros, {}, line).expand(rest, line)
        kw = _KEYWORD_RE.search(rest)
        head = rest[: kw.start()] if kw else rest
        words = [w for w in re.split(r"[\s,]+", head.strip()) if w]
        count_text = "1"
        if kw is None:
            count_text = head.strip() or "1"
            words = []
        elif words and not _IDENT_RE.fullmatch(words[0]):
            count_text = words.pop(0)
        count = self._count(count_text, line)
        names = [w.lower() for w in words]
        for name in names:
            if not _IDENT_RE.fullmatch(name) or name in _BUILTINS:
                raise self.error(f"queue: {name!r} cannot be a queue variable name", line)
        if kw is None:
            return _Queue(line, count, [], None, dict(self.macros))
        mode, tail = kw.group(1).lower(), rest[kw.end():].strip()
        names = names or ["item"]
        only = None
        if mode == "matching" and (m := re.match(r"(files|dirs)\b\s*", tail, re.I)):
            only, tail = m.group(1).lower(), tail[m.end():]
        slice_ = None
        if m := _SLICE_RE.match(tail):
            parts = [int(p) if p else None for p in m.groups()]
            slice_, tail = slice(*parts), tail[m.end():].strip()
        body = self._list_body(tail, line, lines)  # list of raw lines, or None for a file
        if mode == "from":
            if body is None:
                if tail.endswith("|"):
                    raise self.error("queue from a command ('|') is not supported", line)
                path = self.base_dir / tail
                try:
                    body = path.read_text(encoding="utf-8").splitlines()
                except (OSError, UnicodeDecodeError) as exc:
                    raise self.error(f"queue from: cannot read {tail!r}: {exc}", line) from None
            rows = [self._row(r, names, line) for r in body if r.strip()
                    and not r.strip().startswith("#")]
        else:
            words = _split_list(" ".join(body if body is not None else [tail]))
            if mode == "matching":
                words = self._glob(words, only, line)
            if len(names) != 1:
                raise self.error(f"queue ... {mode}: takes exactly one variable name", line)
            rows = [[w] for w in words]
        if slice_ is not None:
            rows = rows[slice_]
        return _Queue(line, count, names, rows, dict(self.macros))

    def _count(self, text: str, line: int) -> int:
        try:
            value = int(text) if text.isdigit() else classad2.ExprTree(text).eval()
        except Exception:
            value = None
        if type(value) is not int or value < 0:
            raise self.error(f"queue: expected a job count such as 10, got {text!r}", line)
        return value

    def _list_body(
        self, tail: str, line: int, lines: Iterator[tuple[int, str]]
    ) -> list[str] | None:
        """The text of a `( ... )` item list, which may run over the following lines."""
        if not tail.startswith("("):
            return None
        if tail.endswith(")"):
            return [tail[1:-1]]
        if ")" in tail:
            raise self.error("queue: unexpected text after ')'", line)
        body = [tail[1:]] if tail[1:].strip() else []
        for _lineno, raw in lines:
            if raw.strip().startswith(")"):
                return body
            body.append(raw)
        raise self.error("queue: item list '(' is never closed with a line starting ')'", line)

    def _row(self, text: str, names: list[str], line: int) -> list[str]:
        values = re.split(r"[\s,]+", text.strip(), maxsplit=len(names) - 1) if len(names) > 1 \
            else [text.strip()]  # (maxsplit=0 would mean "no limit")
        if len(values) != len(names):
            raise self.error(
                f"queue from: {text.strip()!r} has {len(values)} value(s) for "
                f"{len(names)} variable(s) ({', '.join(names)})", line,
            )
        return [v.strip() for v in values]

    def _glob(self, patterns: list[str], only: str | None, line: int) -> list[str]:
        found: list[str] = []
        for pattern in patterns:
            for name in sorted(glob.glob(pattern, root_dir=self.base_dir)):
                is_dir = (self.base_dir / name).is_dir()
                if (only == "files" and is_dir) or (only == "dirs" and not is_dir):
                    continue
                if name not in found:
                    found.append(name)
        if not found:
            raise self.error(f"queue matching: nothing matches {' '.join(patterns)!r} "
                             f"in {self.base_dir}", line)
        return found

    # ------------------------------------------------------------ building jobs

    def build(self) -> list[JobDescription]:
        jobs: list[JobDescription] = []
        for q in self.queues:
            for index, row in enumerate(q.items if q.items is not None else [None]):
                values = dict(zip(q.names, row, strict=True)) if row is not None else {}
                for step in range(q.count):
                    ids = {"process": len(jobs), "step": step, "itemindex": index}
                    jobs.append(_JobBuilder(self, q, values, ids).build())
        if not jobs:
            raise self.error("the queue statements produce no jobs", self.queues[-1].line)
        return jobs

    def check_expr(self, text: str, what: str, line: int) -> str:
        """Validate a ClassAd expression; return it stripped, safe to embed in an ad."""
        text = text.strip()
        if text not in self._checked:
            self._checked[text] = _expr_problem(text.replace(CLUSTER_PLACEHOLDER, "0"))
        if (problem := self._checked[text]) is not None:
            raise self.error(f"{what}: {problem}: {text!r}", line)
        return text

    def exists(self, path: Path) -> bool:
        if path not in self._exists:
            self._exists[path] = path.exists()
        return self._exists[path]


class _Expander:
    """Expands `$(...)` in one job's context: queue variables, built-ins, then commands."""

    def __init__(self, parser: _Parser, macros: dict[str, _Assign],
                 values: dict[str, str], line: int, ids: dict[str, int] | None = None):
        self.parser, self.macros, self.values, self.ids = parser, macros, values, ids
        self.queue_line = line

    def expand(self, text: str, line: int, stack: tuple[str, ...] = ()) -> str:
        if "$" not in text:
            return text

        def one(m: re.Match[str]) -> str:
            func, body = m.group(1), m.group(2)
            if func == "$":  # `$$(attr)` is for the execute side: keep it
                return m.group(0)
            if func is not None and not re.fullmatch(r"F[pnxq]*", func, re.IGNORECASE):
                raise self.parser.error(f"${func}(...) is not supported", line)
            name, colon, default = body.partition(":")
            value = self.lookup(name.strip(), default if colon else None, line, stack)
            return value if func is None else _file_parts(value, func[1:].lower())

        return _MACRO_RE.sub(one, text)

    def lookup(self, name: str, default: str | None, line: int, stack: tuple[str, ...]) -> str:
        lower = name.lower()
        if lower in self.values:
            return self.values[lower]
        if lower == "dollar":
            return "$"
        if lower in ("cluster", "clusterid"):
            return CLUSTER_PLACEHOLDER
        if self.ids is not None and lower in _BUILTINS:
            key = {"procid": "process", "row": "itemindex"}.get(lower, lower)
            return str(self.ids[key])
        if lower in stack:
            raise self.parser.error(f"macro $({name}) refers to itself", line)
        if (assign := self.macros.get(lower)) is not None:
            return self.expand(assign.value, assign.line, (*stack, lower))
        if default is not None:
            return default
        if lower == "item":
            raise self.parser.error(
                f"$({name}) is not set: the queue statement on line {self.queue_line} "
                "gives no item list (or names its variables differently)", line,
            )
        raise self.parser.error(f"undefined macro $({name})", line)


class _JobBuilder:
    """Turns the commands in force at one queue statement into one job."""

    def __init__(self, parser: _Parser, q: _Queue, values: dict[str, str],
                 ids: dict[str, int]):
        self.p, self.q, self.ids = parser, q, ids
        self.x = _Expander(parser, q.macros, values, q.line, ids)
        self.attrs: dict[str, str] = {}

    def get(self, key: str) -> tuple[str, int] | None:
        """A command's expanded value and line, or None when not given (or empty)."""
        assign = self.q.macros.get(key)
        if assign is None:
            return None
        value = self.x.expand(assign.value, assign.line).strip()
        return (value, assign.line) if value else None

    def fail(self, key: str, message: str, line: int) -> SubmitError:
        return self.p.error(f"{key}: {message}", line)

    def build(self) -> JobDescription:
        attrs = self.attrs
        if (uni := self.get("universe")) and uni[0].lower() != "vanilla":
            raise self.fail("universe", f"{uni[0]!r} is not supported: glidewms runs "
                            "vanilla universe jobs only", uni[1])
        if (genv := self.get("getenv")) and genv[0].lower() not in _FALSE:
            raise self.fail("getenv", "getenv is not supported: jobs run on remote nodes",
                            genv[1])
        iwd = self.p.base_dir
        if idir := self.get("initialdir"):
            iwd = (iwd / idir[0]).resolve()
            if not iwd.is_dir():
                raise self.fail("initialdir", f"no such directory: {idir[0]!r}", idir[1])
        executable, cmd = self.executable(iwd)
        attrs["Cmd"] = _quote(cmd)
        args = self.arguments()
        attrs["Arguments"] = _quote(" ".join(_v2_quote(a) for a in args))
        env = self.environment()
        attrs["Environment"] = _quote(" ".join(f"{k}={_v2_quote(v)}" for k, v in env.items()))
        attrs["Iwd"] = _quote(str(iwd))
        inputs = self.input_files(iwd)
        if inputs:
            attrs["TransferInput"] = _quote(",".join(str(p) for p in inputs))
        if stdin := self.get("input"):
            path = self.local_file("input", stdin, iwd)
            attrs["In"] = _quote(str(path))
            inputs.append(path)
        out_err: dict[str, str] = {}
        for key, attr in (("output", "Out"), ("error", "Err"), ("log", "UserLog")):
            if given := self.get(key):
                out_err[key] = os.path.normpath(iwd / given[0])
                attrs[attr] = _quote(out_err[key])
        transfer_output = None
        if given := self.get("transfer_output_files"):
            transfer_output = _split_list(given[0])
            attrs["TransferOutput"] = _quote(",".join(transfer_output))
        attrs["TransferExecutable"] = "true" if executable else "false"
        attrs["ShouldTransferFiles"] = _quote(self.choice(
            "should_transfer_files", "YES", {"YES", "NO", "IF_NEEDED"}))
        attrs["WhenToTransferOutput"] = _quote(self.choice(
            "when_to_transfer_output", "ON_EXIT", {"ON_EXIT", "ON_EXIT_OR_EVICT", "ON_SUCCESS"}))
        attrs["JobUniverse"] = str(VANILLA_UNIVERSE)
        attrs["RequestCpus"] = str(self.integer("request_cpus", DEFAULT_REQUEST_CPUS, 1))
        attrs["RequestMemory"] = str(self.size("request_memory", DEFAULT_REQUEST_MEMORY_MIB, 1024))
        attrs["RequestDisk"] = str(self.size("request_disk", DEFAULT_REQUEST_DISK_KIB, 1))
        gpus = self.integer("request_gpus", 0, 0)
        if self.get("request_gpus"):
            attrs["RequestGPUs"] = str(gpus)
        attrs["JobPrio"] = str(self.integer("priority", 0, None))
        if self.get("max_retries"):
            attrs["MaxRetries"] = str(self.integer("max_retries", 0, 0))
        for key, attr in _STRING_KEYS.items():
            if given := self.get(key):
                attrs[attr] = _quote(given[0])
        for key, attr in _EXPR_KEYS.items():
            if given := self.get(key):
                attrs[attr] = self.p.check_expr(given[0], key, given[1])
        for lower, assign in self.q.macros.items():
            if lower.startswith("my."):
                value = self.x.expand(assign.value, assign.line)
                attrs[assign.key] = self.p.check_expr(value, "+" + assign.key, assign.line)
        clauses = ["TARGET.Cpus >= RequestCpus", "TARGET.Memory >= RequestMemory",
                   "TARGET.Disk >= RequestDisk"] + (["TARGET.GPUs >= RequestGPUs"] * (gpus > 0))
        if req := self.get("requirements"):
            clauses.insert(0, self.p.check_expr(req[0], "requirements", req[1]))
        attrs["Requirements"] = " && ".join(f"({c})" for c in clauses)
        attrs["ProcId"] = str(self.ids["process"])
        return JobDescription(
            attrs=attrs, args=args, env=env, executable=executable, inputs=inputs,
            out=out_err.get("output"), err=out_err.get("error"),
            transfer_output=transfer_output, proc_id=self.ids["process"], iwd=iwd,
        )

    def executable(self, iwd: Path) -> tuple[Path | None, str]:
        given = self.get("executable")
        if given is None:
            raise self.p.error("no executable given for this queue statement", self.q.line)
        if not self.boolean("transfer_executable", True):
            if not os.path.isabs(given[0]):
                raise self.fail("executable", "with transfer_executable = false the "
                                "executable must be an absolute path on the execute node, "
                                f"got {given[0]!r}", given[1])
            return None, given[0]
        path = self.local_file("executable", given, iwd)
        if path.is_dir():
            raise self.fail("executable", f"{given[0]!r} is a directory", given[1])
        return path, str(path)

    def local_file(self, key: str, given: tuple[str, int], iwd: Path) -> Path:
        path = Path(os.path.normpath(iwd / given[0]))
        if not self.p.exists(path):
            raise self.fail(key, f"no such file: {given[0]!r} (looked for {path})", given[1])
        return path

    def input_files(self, iwd: Path) -> list[Path]:
        given = self.get("transfer_input_files")
        if given is None:
            return []
        paths: list[Path] = []
        for name in _split_list(given[0]):
            if "://" in name:
                raise self.fail("transfer_input_files", f"URL inputs are not supported: "
                                f"{name!r}", given[1])
            paths.append(self.local_file("transfer_input_files", (name, given[1]), iwd))
        return paths

    def arguments(self) -> list[str]:
        given = self.get("arguments")
        if given is None:
            return []
        text, line = given
        if not text.startswith('"'):  # old syntax: spaces separate, \" is a quote
            return [w.replace('\\"', '"') for w in text.split()]
        return _split_v2(_unquote_v2(text, "arguments", self.p, line), "arguments", self.p, line)

    def environment(self) -> dict[str, str]:
        given = self.get("environment")
        if given is None:
            return {}
        text, line = given
        if text.startswith('"'):
            entries = _split_v2(_unquote_v2(text, "environment", self.p, line),
                                "environment", self.p, line)
        else:  # old syntax: NAME=value;NAME=value, everything literal
            entries = [e.strip() for e in text.split(";") if e.strip()]
        env: dict[str, str] = {}
        for entry in entries:
            name, eq, value = entry.partition("=")
            if not eq or not name or any(c.isspace() for c in name):
                raise self.fail("environment", f"expected NAME=value, got {entry!r}", line)
            env[name] = value
        return env

    def integer(self, key: str, default: int, minimum: int | None) -> int:
        given = self.get(key)
        if given is None:
            return default
        value = int(given[0]) if re.fullmatch(r"[+-]?\d+", given[0]) else None
        if value is None or (minimum is not None and value < minimum):
            wanted = "a whole number" + (f" >= {minimum}" if minimum is not None else "")
            raise self.fail(key, f"expected {wanted}, got {given[0]!r}", given[1])
        return value

    def size(self, key: str, default: int, unit_kib: int) -> int:
        """A size in the key's unit (MiB: 1024 KiB, KiB: 1); K/M/G/T are binary, as in
        HTCondor; a bare number is already in the key's unit; rounds up."""
        given = self.get(key)
        if given is None:
            return default
        m = _SIZE_RE.fullmatch(given[0])
        if m is None or float(m.group(1)) <= 0:
            raise self.fail(key, "expected a size such as 2048, 2 GB or 512M, "
                            f"got {given[0]!r}", given[1])
        factor = _KIB[m.group(2).lower()] / unit_kib if m.group(2) else 1
        return math.ceil(float(m.group(1)) * factor)

    def boolean(self, key: str, default: bool) -> bool:
        given = self.get(key)
        if given is None:
            return default
        if given[0].lower() in _TRUE | _FALSE:
            return given[0].lower() in _TRUE
        raise self.fail(key, f"expected true or false, got {given[0]!r}", given[1])

    def choice(self, key: str, default: str, allowed: set[str]) -> str:
        given = self.get(key)
        if given is None:
            return default
        if given[0].upper() not in allowed:
            raise self.fail(key, f"expected one of {', '.join(sorted(allowed))}, "
                            f"got {given[0]!r}", given[1])
        return given[0].upper()


# ---------------------------------------------------------------- small helpers


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Physical lines joined at trailing backslashes, each with its first line number."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if pending is not None and line.lstrip().startswith("#"):
            continue  # a comment inside a continued command
        start, before = pending if pending is not None else (number, "")
        if line.endswith("\\"):
            pending = (start, before + line[:-1])
            continue
        pending = None
        out.append((start, before + line))
    if pending is not None:
        out.append(pending)
    return out


def _quote(value: str) -> str:
    """A ClassAd string literal (only `\\` and `"` need escaping on one line)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _expr_problem(text: str) -> str | None:
    """Why `text` is not one complete ClassAd expression, or None if it is.

    classad2.ExprTree stops quietly at a top-level `;` or `]` (`"a; B = 1"` parses as
    `a`), which would let a value smuggle attributes into the job ad: reject those.
    """
    if not text:
        return "expected a ClassAd expression"
    depth, i = 0, 0
    while i < len(text):
        c = text[i]
        if c in "\"'":
            end = i + 1
            while end < len(text) and text[end] != c:
                end += 2 if text[end] == "\\" else 1
            if end >= len(text):
                return "unterminated quote in ClassAd expression"
            i = end
        elif c == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                return "unterminated comment in ClassAd expression"
            i = end + 1
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                return f"unbalanced {c!r} in ClassAd expression"
        elif c == ";" and depth == 0:
            return "';' is not allowed in a ClassAd expression"
        i += 1
    try:
        classad2.ExprTree(text)
    except Exception:  # classad2's ClassAdException, not exported by the package
        return "not a valid ClassAd expression"
    return None


def _unquote_v2(text: str, key: str, parser: _Parser, line: int) -> str:
    """Strip the outer double quotes of the new syntax; `""` inside stands for `"`."""
    inner = text[1:-1]
    if len(text) < 2 or not text.endswith('"') or inner.replace('""', "").count('"'):
        raise parser.error(f'{key}: the new syntax needs one "..." with inner double '
                           f'quotes doubled (""), got {text!r}', line)
    return inner.replace('""', '"')


def _split_v2(text: str, key: str, parser: _Parser, line: int) -> list[str]:
    """Split on whitespace; '...' groups (with '' for a literal quote) and may be empty."""
    words: list[str] = []
    current, started, i = "", False, 0
    while i < len(text):
        c = text[i]
        if c == "'":
            end = i + 1
            while True:
                end = text.find("'", end)
                if end < 0:
                    raise parser.error(f"{key}: unterminated single quote in {text!r}", line)
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


def _v2_quote(word: str) -> str:
    """One word in the new (V2) raw syntax stored in Arguments/Environment."""
    if word and not any(c.isspace() or c == "'" for c in word):
        return word
    return "'" + word.replace("'", "''") + "'"


def _split_list(text: str) -> list[str]:
    return [w for w in re.split(r"[\s,]+", text) if w]


def _file_parts(value: str, flags: str) -> str:
    """`$F[pnxq](name)`: p directory (with '/'), n name without extension, x extension,
    q double-quoted; no p/n/x flag means the whole value."""
    head, tail = os.path.split(value)
    stem, ext = os.path.splitext(tail)
    if set(flags) & set("pnx"):
        value = ((head + "/" if "p" in flags and head else "")
                 + (stem if "n" in flags else "") + (ext if "x" in flags else ""))
    return f'"{value}"' if "q" in flags else value
