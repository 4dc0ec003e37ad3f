"""The commands in force at a queue statement -> one job ad per item and step.

`JobBuilder.get(command)` is condor_submit's `submit_param`: the value of a
command under any of its names (a queue variable of that name first, so
`queue arguments from ...` sets the arguments), macros expanded for this job,
None when unset or empty. The translation itself is spread over `files`,
`resources` and `container`; this module runs them in condor_submit's order
and adds the simple commands, the `+Attr` ones and the refusals.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from glidewms.submit import commands, container, files, resources
from glidewms.submit.commands import Status
from glidewms.submit.context import Context
from glidewms.submit.environ import boolean
from glidewms.submit.exprs import problem, quote
from glidewms.submit.functions import long_param
from glidewms.submit.macros import CLUSTER_SENTINEL, Expander
from glidewms.submit.model import JobDescription, SubmitError
from glidewms.submit.reader import Assign, Block, Reader

# `+Attr`s the pool assigns, and those whose command also shapes the sandbox.
ASSIGNED = frozenset(
    {
        "clusterid",
        "procid",
        "qdate",
        "jobstatus",
        "numjobstarts",
        "numrestarts",
        "enteredcurrentstatus",
        "exitcode",
        "remotepilot",
        "holdreason",
        "holdreasoncode",
        "completiondate",
        "jobstartdate",
    }
)
DROPPED = frozenset({"owner", "user"})
SHAPED = {
    "cmd": "executable",
    "arguments": "arguments",
    "args": "arguments",
    "environment": "environment",
    "env": "environment",
    "iwd": "initialdir",
    "in": "input",
    "out": "output",
    "err": "error",
    "userlog": "log",
    "transferinput": "transfer_input_files",
    "transferoutput": "transfer_output_files",
    "transferexecutable": "transfer_executable",
    "jobuniverse": "universe",
    "shouldtransferfiles": "should_transfer_files",
    "whentotransferoutput": "when_to_transfer_output",
    "x509userproxy": "x509userproxy",
}
_NOTIFY = {"never": 0, "always": 1, "complete": 2, "error": 3, "start": 4}


@dataclass(frozen=True)
class Got:
    """A command's value for this job, and where it was written."""

    value: str
    source: str
    line: int
    key: str


class JobBuilder:
    def __init__(
        self, ctx: Context, block: Block, values: list[str], item_index: int, step: int, proc: int
    ):
        self.ctx, self.block, self.proc = ctx, block, proc
        self.live = {
            "cluster": CLUSTER_SENTINEL,
            "clusterid": CLUSTER_SENTINEL,
            "process": str(proc),
            "procid": str(proc),
        }
        for name, value in zip(block.args.names, values, strict=True):
            self.live[name.lower()] = value
        self.counters = {"step": str(step), "row": str(item_index), "itemindex": str(item_index)}
        self.volatile = (
            frozenset(self.live) - {"cluster", "clusterid"} | frozenset(self.counters) | {"jobid"}
        )
        self.attrs: dict[str, str] = {}
        self.inputs: list[Path] = []
        self.urls: list[str] = []
        self.clauses: list[str] = []
        # requirements() adds these: clauses for custom resources (before
        # `clauses`), and requests written as expressions, checked once the ad is whole
        self.custom_clauses: list[str] = []
        self.request_exprs: list[tuple[str, Got, int, bool]] = []
        self.iwd = ctx.base_dir
        self.flags: dict[str, object] = {}
        self._where: tuple[str, int] = (block.source, block.line)
        self._x = Expander(
            self._lookup, ctx.limits, self._error, ctx.functions, self.volatile, self._undefined
        )

    # ------------------------------------------------------------ lookups

    def _lookup(self, name: str) -> str | None:
        if name in self.live:
            return self.live[name]
        assign = self.block.macros.get(name)
        if assign is not None:
            return assign.value
        if name in self.counters:
            return self.counters[name]
        return self.ctx.defaults.get(name)

    def _error(self, message: str) -> SubmitError:
        return SubmitError(message, *self._where)

    def _undefined(self, name: str) -> None:
        self.ctx.warn(*self._where, f"$({name}) is not defined: it expands to nothing")

    def expand(self, text: str, source: str, line: int) -> str:
        if "$" not in text:
            return text
        cached = self.block.cache.get(text)
        if cached is not None:
            return cached
        self._where = (source, line)
        self._x.volatile = False
        out = self._x.expand(text)
        if not self._x.volatile:
            self.block.cache[text] = out
        return out

    def raw(self, command: str) -> Got | None:
        """The unexpanded value of a command under any of its names (the first
        name set wins, as in condor_submit; queue variables set it too)."""
        found = self.block.found
        if command not in found:
            names = commands.NAMES[command]
            variables = {n.lower() for n in self.block.args.names}
            found[command] = next(
                (n for n in names if n in variables or n in self.block.macros), None
            )
        name = found[command]
        if name is None:
            return None
        if name in self.live:
            return Got(self.live[name], self.block.source, self.block.line, name)
        assign = self.block.macros[name]
        return Got(assign.value, assign.source, assign.line, assign.key)

    def get(self, command: str) -> Got | None:
        """A command's value for this job; kept for the block's other jobs
        when nothing in it depends on the job (a million jobs of one queue
        statement ask each command once, not a million times)."""
        memo = self.block.got
        if command in memo:
            return memo[command]
        found = self.raw(command)
        if found is None:
            memo[command] = None
            return None
        value = self.expand(found.value, found.source, found.line).strip()
        got = Got(value, found.source, found.line, found.key) if value else None
        constant = "$" not in found.value or found.value in self.block.cache
        if constant and self.block.found[command] not in self.live:
            memo[command] = got
        return got

    def got_of(self, assign: Assign) -> Got:
        return Got(assign.value, assign.source, assign.line, assign.key)

    def fail(self, got: Got | None, message: str) -> SubmitError:
        if got is None:
            return SubmitError(message, self.block.source, self.block.line)
        return SubmitError(f"{got.key}: {message}", got.source, got.line)

    def expr(self, got: Got) -> str:
        """A command's value, checked to be one ClassAd expression."""
        found = problem(got.value)
        if found is not None:
            raise self.fail(got, f"{found}: {got.value!r}")
        return got.value.strip()

    def boolean(self, command: str, default: bool) -> bool:
        got = self.get(command)
        if got is None:
            return default
        value = boolean(got.value)
        if value is None:
            raise self.fail(got, f"expected true or false, got {got.value!r}")
        return value

    def integer(self, command: str, default: int | None, minimum: int | None) -> int | None:
        got = self.get(command)
        if got is None:
            return default
        value = long_param(got.value)
        if value is None or (minimum is not None and value < minimum):
            wanted = "a whole number" + (f" >= {minimum}" if minimum is not None else "")
            raise self.fail(got, f"expected {wanted}, got {got.value!r}")
        return value

    # ------------------------------------------------------------ the job

    def build(self) -> JobDescription:
        container.universe(self)
        files.iwd(self)
        executable = files.executable(self)
        args = files.arguments(self)
        env = files.environment(self)
        files.transfer(self)
        resources.requests(self)
        self._simple()
        resources.policy(self)
        container.image(self)
        self._forced()
        resources.requirements(self)
        self.attrs["ProcId"] = str(self.proc)
        out, err = self.flags.get("out"), self.flags.get("err")
        transfer_output = self.flags.get("transfer_output")
        return JobDescription(
            attrs=self.attrs,
            args=args,
            env=env,
            executable=executable,
            inputs=self.inputs,
            out=out if isinstance(out, str) else None,
            err=err if isinstance(err, str) else None,
            transfer_output=transfer_output if isinstance(transfer_output, list) else None,
            proc_id=self.proc,
            iwd=self.iwd,
            input_urls=self.urls,
        )

    def _simple(self) -> None:
        for c in commands.SIMPLE:
            got = self.get(c.name)
            if got is None or c.attr is None:
                continue
            value = got.value
            if c.kind == "str":
                self.attrs[c.attr] = quote(value)
            elif c.kind == "strq":
                self.attrs[c.attr] = quote(_strip_quotes(value))
            elif c.kind == "list":
                self.attrs[c.attr] = quote(",".join(w for w in value.replace(",", " ").split()))
            elif c.kind == "expr":
                self.attrs[c.attr] = self.expr(got)
            elif c.kind == "bool":
                self.attrs[c.attr] = "true" if self.boolean(c.name, False) else "false"
            else:
                self.attrs[c.attr] = str(self.integer(c.name, 0, None))
        if got := self.get("notification"):
            code = _NOTIFY.get(got.value.lower())
            if code is None:
                raise self.fail(
                    got, f"expected Never, Always, Complete, Start or Error, got {got.value!r}"
                )
            self.attrs["JobNotification"] = str(code)
        self.attrs["JobPrio"] = str(self.integer("priority", 0, None))

    def _forced(self) -> None:
        for lower, assign in self.block.macros.items():
            if not lower.startswith("my."):
                continue
            attr, name = assign.key, lower[3:]
            if name in ASSIGNED:
                raise SubmitError(
                    f"+{attr}: {attr} is assigned by glidewms", assign.source, assign.line
                )
            if name in SHAPED:
                raise SubmitError(
                    f"+{attr}: set {attr} with the '{SHAPED[name]}' command",
                    assign.source,
                    assign.line,
                )
            if name in DROPPED:
                self.ctx.warn(
                    assign.source,
                    assign.line,
                    f"+{attr} is ignored: the pool sets {attr} to the submitter",
                )
                continue
            value = self.expand(assign.value, assign.source, assign.line)
            found = problem(value)
            if found is not None:
                raise SubmitError(
                    f"+{attr}: {found}: {value.strip()!r}", assign.source, assign.line
                )
            self.attrs[attr] = value.strip()
            self.flags["forced:" + name] = True


def _strip_quotes(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def check_refused(builder: JobBuilder) -> None:
    """Refuse commands glidewms cannot honour, unless they ask for nothing (false)."""
    for lower, assign in builder.block.macros.items():
        command = commands.lookup(lower)
        if command is None or command.status is not Status.REFUSED:
            continue
        value = builder.expand(assign.value, assign.source, assign.line).strip()
        if not value or boolean(value) is False:
            continue
        raise SubmitError(
            f"{assign.key}: not supported by glidewms: {command.note}", assign.source, assign.line
        )


def iter_jobs(ctx: Context, reader: Reader) -> Iterator[JobDescription]:
    """The jobs one at a time, in ProcId order: a million-job cluster is sent
    without ever holding a million jobs (SubmitError may come at any job)."""
    proc = 0
    for block in reader.blocks:
        checked = False
        for index, values in block.rows:
            for step in range(block.args.count):
                builder = JobBuilder(ctx, block, values, index, step, proc)
                if not checked:
                    check_refused(builder)
                    checked = True
                yield builder.build()
                proc += 1
    if proc == 0:
        last = reader.blocks[-1]
        raise SubmitError("the queue statements produce no jobs", last.source, last.line)


def build_jobs(ctx: Context, reader: Reader) -> list[JobDescription]:
    return list(iter_jobs(ctx, reader))
