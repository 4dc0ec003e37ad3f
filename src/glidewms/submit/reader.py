"""Statements of a submit file -> the commands in force at each `queue`.

One pass over the logical lines, as condor_submit's `Parse_macros`: `if`
blocks, `include`, `error`/`warning`, here-documents (`name @=END`), `+=`,
`+Attr`/`MY.Attr`/`-Attr`, self-references expanded at the assignment, other
macros left for the job. Each `queue` statement takes a snapshot of the
commands and its items; nothing is translated to an ad here.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from glidewms.submit import commands, conditions
from glidewms.submit.context import Context
from glidewms.submit.lines import LineReader, decode
from glidewms.submit.macros import Expander, expand_self, macro_names, mapping_lookup
from glidewms.submit.model import SubmitError
from glidewms.submit.queue import (
    QueueArgs,
    add_external,
    add_list_line,
    glob_items,
    parse_queue_args,
    split_row,
)

_NAME_END = re.compile(r"[\s=:]")
_PLUS_OP = re.compile(r"\+([,;|&*]{0,2})=")
_PARAM_NAME = re.compile(r"[A-Za-z0-9_./]+")
_ATTR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUEUE = re.compile(r"queue(?:\s+(.*))?", re.IGNORECASE | re.DOTALL)
_KEYWORD_OPS = {"include", "use", "error", "warning"}
_IF = re.compile(r"(if|elif|else|endif)(?:\s+(.*))?$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Assign:
    key: str  # as written (for `+Attr`/`MY.Attr`: the attribute name)
    value: str
    source: str
    line: int


@dataclass
class Block:
    """One queue statement: where it is, its items, and the commands in force."""

    source: str
    line: int
    args: QueueArgs
    rows: list[tuple[int, list[str]]]  # (ItemIndex, values of args.names)
    macros: dict[str, Assign]
    cache: dict[str, str] = field(default_factory=dict)  # expansions independent of the job
    found: dict[str, str | None] = field(default_factory=dict)  # command -> key that sets it
    # command -> its value (build.Got or None) where that is the same for every job
    got: dict[str, Any] = field(default_factory=dict)


class Reader:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.macros: dict[str, Assign] = {}
        self.blocks: list[Block] = []
        self.assigns: list[tuple[str, Assign]] = []
        self.after_queue: Assign | None = None
        self.jobs = 0
        self.referenced: set[str] = set()  # macros named in queue/include/if lines
        self._files: list[str] = []

    # ------------------------------------------------------------ files and lines

    def read(self, text: str, source: str) -> None:
        if len(self._files) >= self.ctx.limits.max_include_depth:
            raise SubmitError(
                f"includes nested more than {self.ctx.limits.max_include_depth} deep", source
            )
        if source in self._files:
            raise SubmitError("the file includes itself", source)
        self._files.append(source)
        try:
            self._read(LineReader(text, source), source)
        finally:
            self._files.pop()

    def _read(self, lines: LineReader, source: str) -> None:
        ifs = conditions.IfStack(self.ctx.limits.max_if_depth)
        here: tuple[str, str, list[str], int] | None = None  # name, tag, lines, line
        while (item := lines.next()) is not None:
            number, line = item
            if not line or line.startswith("#"):
                continue
            if here is not None:
                if line.startswith("@") and line[1:] == here[1]:
                    self._assign(here[0], "\n".join(here[2]), source, here[3])
                    here = None
                else:
                    here[2].append(line)
                continue
            if line.startswith(":") and (ifs.frames or re.match(r":if(\s|$)", line)):
                line = line[1:]
            try:
                if self._if_statement(line, ifs, source, number):
                    continue
            except ValueError as exc:
                raise SubmitError(str(exc), source, number) from None
            if not ifs.enabled():
                continue
            here = self._statement(line, source, number, lines)
        if here is not None:
            raise SubmitError(
                f"end of file while looking for '@{here[1]}' (started here)", source, here[3]
            )
        if ifs.frames:
            raise SubmitError(
                "this if has no endif before the end of the file", source, ifs.lines[-1]
            )

    def _if_statement(self, line: str, ifs: conditions.IfStack, source: str, number: int) -> bool:
        m = _IF.match(line)
        if m is None:
            return False
        word, rest = m.group(1).lower(), (m.group(2) or "").strip()
        if word == "if":
            ifs.begin_if(lambda: self._condition(rest, source, number), number)
        elif word == "elif":
            ifs.begin_elif(lambda: self._condition(rest, source, number))
        elif word == "else":
            ifs.begin_else()
        else:
            ifs.end_if()
        return True

    def _condition(self, text: str, source: str, number: int) -> bool:
        expanded = "$" in text
        if expanded:
            text = self.expand(text, source, number).strip()
        try:
            return conditions.evaluate(text, expanded, self._is_defined, self.ctx.version)
        except ValueError as exc:
            raise ValueError(f"{text} is not a valid if condition because {exc}") from None

    def _is_defined(self, name: str) -> bool:
        assign = self.macros.get(name.lower())
        if assign is not None:
            return assign.value != ""
        return bool(self.ctx.defaults.get(name.lower()))

    # ------------------------------------------------------------ statements

    def _statement(
        self, line: str, source: str, number: int, lines: LineReader
    ) -> tuple[str, str, list[str], int] | None:
        m = _NAME_END.search(line)
        if m is None:
            self._queue_or_error(line, source, number, lines)
            return None
        name, rest = line[: m.start()], line[m.start() :]
        stripped = rest.lstrip()
        word_before_op = ""
        if stripped[:1] not in ("=", ":"):
            op_at = re.search(r"[=:@+]", stripped)
            word_before_op = stripped[: op_at.start()] if op_at else stripped
            stripped = stripped[op_at.start() :] if op_at else ""
        op, rhs = self._operator(stripped)
        keyword = name.lstrip("@").lower()
        if op == ":" and keyword in _KEYWORD_OPS:
            self._keyword(keyword, word_before_op.strip(), rhs, source, number)
            return None
        if (
            word_before_op.strip()
            or not (op in ("=", "@=") or op.startswith("+"))
            or name.lower() == "queue"
        ):
            self._queue_or_error(line, source, number, lines)
            return None
        if "$" in name:
            name = self.expand(name, source, number)
        if op == "=" and name[:1] in "+-" and name[1:]:
            self._plus(name, rhs, source, number)
            return None
        if name.lower().startswith("my.") and op == "=":
            self._plus("+" + name[3:], rhs, source, number)
            return None
        if not _PARAM_NAME.fullmatch(name):
            raise SubmitError(
                f"{name!r} is not a valid submit command or macro name", source, number
            )
        if op == "@=":
            return name, rhs, [], number
        if op.startswith("+"):
            rhs = self._append(name, op, rhs)
        self._assign(name, rhs, source, number)
        return None

    @staticmethod
    def _operator(text: str) -> tuple[str, str]:
        if text.startswith("=") or text.startswith(":"):
            return text[0], text[1:].lstrip()
        if text.startswith("@="):
            return "@=", text[2:].strip()
        if m := _PLUS_OP.match(text):
            return "+" + m.group(1) + "=", text[m.end() :].lstrip()
        return "", text

    def _append(self, name: str, op: str, rhs: str) -> str:
        current = self.macros.get(name.lower())
        if current is None or not current.value:
            return rhs
        sep = op[1:-1]
        joint = " " if not sep else f" {sep[0] * 2} " if len(sep) == 2 else sep
        return current.value + joint + rhs

    def _assign(self, name: str, value: str, source: str, number: int) -> None:
        lower = name.lower()
        previous = self.macros.get(lower)
        value = expand_self(value, lower, previous.value if previous else None)
        assign = Assign(name, value, source, number)
        self.macros[lower] = assign
        self.assigns.append((lower, assign))
        if self.after_queue is None and self.blocks:
            self.after_queue = assign

    def _plus(self, name: str, rhs: str, source: str, number: int) -> None:
        attr = name[1:]
        if not _ATTR_NAME.fullmatch(attr):
            raise SubmitError(
                f"{name}: {attr!r} is not a valid ClassAd attribute name", source, number
            )
        lower = "my." + attr.lower()
        if name[0] == "-" or not rhs:
            self.macros.pop(lower, None)
            return None
        assign = Assign(attr, rhs, source, number)
        self.macros[lower] = assign
        self.assigns.append((lower, assign))
        if self.after_queue is None and self.blocks:
            self.after_queue = assign
        return None

    def _keyword(self, keyword: str, options: str, rhs: str, source: str, number: int) -> None:
        if keyword == "include":
            self._include(options, rhs, source, number)
        elif keyword == "use":
            raise SubmitError(
                f"use {options}: submit templates (use STRICT/TEMPLATE) are not "
                "supported by glidewms",
                source,
                number,
            )
        elif keyword == "error":
            message = self.expand(rhs, source, number)
            raise SubmitError(f"error statement: {message}", source, number)
        else:
            self.ctx.warn(source, number, self.expand(rhs, source, number))

    def _include(self, options: str, rhs: str, source: str, number: int) -> None:
        words = options.lower().split()
        must_exist = True
        if words[:1] in (["ifexist"], ["ifexists"]):
            must_exist, words = False, words[1:]
        if words[:1] == ["output"]:
            raise SubmitError(
                "include output: not supported by glidewms: run the command and "
                "include its output file",
                source,
                number,
            )
        is_command = words[:1] == ["command"]
        if is_command:
            words = words[1:]
        if words:
            raise SubmitError(f"unexpected keyword(s) '{options}' after include", source, number)
        name = self.expand(rhs, source, number).strip()
        if is_command or name.endswith("|"):
            command = name[:-1].strip() if name.endswith("|") else name
            if not command:
                raise SubmitError("include: no command before '|'", source, number)
            output = self.ctx.run_command(command, source, number, "include")
            self.read(output, f"{source}:{number} (output of {command!r})")
            return
        if not name:
            raise SubmitError("include: no file name", source, number)
        path = self.ctx.base_dir / name
        if not path.is_file():
            if must_exist:
                raise SubmitError(
                    f"include: no such file: {name!r} (looked for {path})", source, number
                )
            return
        data = self.ctx.read_bytes(path, source, number, self.ctx.limits.max_file_bytes)
        self.read(decode(data, str(path), self.ctx.limits, "included file"), str(path))

    # ------------------------------------------------------------ queue statements

    def _queue_or_error(self, line: str, source: str, number: int, lines: LineReader) -> None:
        m = _QUEUE.fullmatch(line)
        if m is None:
            raise SubmitError(
                f"expected 'key = value', a comment or a queue statement, got {line!r}",
                source,
                number,
            )
        text = self.expand(m.group(1) or "", source, number)
        try:
            args = parse_queue_args(text)
        except ValueError as exc:
            raise SubmitError(f"queue: {exc}", source, number) from None
        self._load_items(args, source, number, lines)
        if args.mode is None:
            rows: list[tuple[int, list[str]]] = [(0, [])]
        else:
            indexed = list(enumerate(args.items))
            if args.slice is not None:
                indexed = indexed[args.slice]
            width = len(args.names)
            rows = [
                (i, split_row(item, width) if args.mode == "from" else [item])
                for i, item in indexed
            ]
            for i, values in rows:
                empty = [n for n, v in zip(args.names, values, strict=True) if not v]
                if empty:
                    self.ctx.warn(
                        source, number, f"empty value(s) for {','.join(empty)} at ItemIndex={i}"
                    )
        self.jobs += args.count * len(rows)
        if self.jobs > self.ctx.limits.max_jobs:
            raise SubmitError(
                f"queue: more than {self.ctx.limits.max_jobs} jobs in one submit "
                "(the limit is GLIDEWMS_SUBMIT_MAX_JOBS)",
                source,
                number,
            )
        self.blocks.append(Block(source, number, args, rows, dict(self.macros)))
        self.after_queue = None

    def _load_items(self, args: QueueArgs, source: str, number: int, lines: LineReader) -> None:
        if args.where == "<":
            while True:
                item = lines.next()
                if item is None:
                    raise SubmitError(
                        "queue: item list '(' is never closed with a line starting ')'",
                        source,
                        number,
                    )
                if item[1].startswith(")"):
                    break
                if not item[1].startswith("#"):
                    add_list_line(args, item[1])
        elif args.where == "-":
            text = self.ctx.read_stdin(source, number)
            add_external(args, text, "<stdin>", self.ctx.warnings)
        elif args.command is not None:
            text = self.ctx.run_command(args.command, source, number, "queue from")
            add_external(args, text, f"{source}:{number} (output)", self.ctx.warnings)
        elif args.where is not None:
            path = self.ctx.base_dir / args.where
            data = self.ctx.read_bytes(
                path, source, number, self.ctx.limits.max_items_file_bytes, "queue from"
            )
            add_external(
                args,
                decode(data, str(path), self.ctx.limits, "item list"),
                args.where,
                self.ctx.warnings,
            )
        if args.mode == "matching":
            found: list[str] = []
            glob_items(args, self.ctx.base_dir, found)
            for text in found:
                self.ctx.warn(source, number, f"queue matching: {text}")

    # ------------------------------------------------------------ helpers

    def expand(self, text: str, source: str, number: int) -> str:
        """Expand at parse time (include names, queue lines, conditions)."""
        if "$" not in text:
            return text
        self.referenced.update(macro_names(text))
        values = {k: a.value for k, a in self.macros.items()}
        x = Expander(
            mapping_lookup(self.ctx.parse_live, values, self.ctx.defaults),
            self.ctx.limits,
            lambda msg: SubmitError(msg, source, number),
            self.ctx.functions,
        )
        return x.expand(text)

    def finish(self, source: str) -> None:
        if not self.blocks:
            raise SubmitError("no queue statement: add 'queue' to submit the job", source)
        if self.after_queue is not None:
            a = self.after_queue
            self.ctx.warn(
                a.source,
                a.line,
                f"{a.key}: commands after the last queue statement "
                "are ignored (as by condor_submit)",
            )
        self._check_typos()

    def _check_typos(self) -> None:
        """A key nobody uses as `$(key)` that is one typo away from a command is a typo."""
        used = {n for _, a in self.assigns for n in macro_names(a.value)}
        used |= {n.lower() for b in self.blocks for n in b.args.names} | self.referenced
        known = sorted(commands.BY_NAME)
        for lower, assign in self.assigns:
            if lower in used or lower.startswith("my.") or commands.lookup(lower):
                continue
            close = difflib.get_close_matches(lower, known, n=1, cutoff=0.8)
            if close and close[0] != lower:
                raise SubmitError(
                    f"unknown command {assign.key!r}; did you mean "
                    f"{commands.BY_NAME[close[0]].name!r}?",
                    assign.source,
                    assign.line,
                )
