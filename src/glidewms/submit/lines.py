"""Physical lines -> logical lines, as HTCondor's `getline_implementation` reads them.

Every physical line is trimmed of white space at both ends; a line ending in `\\`
continues on the next one; a `#` line that starts a logical line is a comment
(and its trailing `\\` does not continue it); a `#` line met *inside* a
continuation counts as its last character only (HTCondor's quirk: the rest of
the comment is dropped, and the continuation goes on only if that character
is a `\\`). Lines split on `\\n` alone (`\\r` is trailing white space), so the
ASCII separators used in item lists (`\\x1f`) never split a line.
"""

from __future__ import annotations

from dataclasses import dataclass

from glidewms.submit.model import Limits, SubmitError


@dataclass
class LineReader:
    """Logical lines of one file, each with the number of its first physical line."""

    text: str
    source: str
    _lines: list[str] | None = None
    _next: int = 0

    def __post_init__(self) -> None:
        self._lines = self.text.split("\n")
        if self._lines and self._lines[-1] == "":
            self._lines.pop()

    def next(self) -> tuple[int, str] | None:
        assert self._lines is not None
        if self._next >= len(self._lines):
            return None
        first = self._next + 1
        buf = ""
        started = False
        while self._next < len(self._lines):
            line = self._lines[self._next].strip()
            self._next += 1
            in_comment = line.startswith("#")
            if in_comment and started:
                line, in_comment = line[-1:], False
            buf += line
            started = True
            if buf.endswith("\\"):
                buf = buf[:-1]
                if not in_comment:
                    continue
            return first, buf
        return first, buf


def decode(data: bytes, source: str, limits: Limits, what: str = "submit file") -> str:
    """File bytes as text, refusing what no submit file contains."""
    if len(data) > limits.max_file_bytes and what != "item list":
        raise SubmitError(f"{what} is larger than {limits.max_file_bytes} bytes", source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SubmitError(f"{what} is not UTF-8 text: {exc}", source) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise SubmitError(f"{what} contains a NUL byte", source, line)
    return text
