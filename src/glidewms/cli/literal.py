"""Other people's data on a terminal: printed literally, control characters made visible.

A job's arguments, its attributes, a hold reason, a downtime's reason, a
pilot's output: any user can put text there that another user or an
operator later sees. Two things must never happen to it:

- rich reads it as markup. A cell ``[/bold]`` raised MarkupError and broke
  ``glidewms q`` for every user of the pool; ``[link=...]`` would style it.
  So user text goes to rich only as ``Text`` (never parsed), and a message
  that mixes our markup with user text escapes the user part.
- the terminal reads it as commands. ``\\x1b]...`` sets the window title or
  a hyperlink, ``\\x1b[2J`` clears the screen, ``\\r`` overwrites a line,
  bidi overrides (U+202E) reorder what is shown. Every such character is
  printed as an escape instead (``\\x1b``, ``\\u202e``).

rich itself strips only a few (bell, backspace, CR, VT, FF) and keeps ESC,
so the replacement is ours, for every output path: ``cell`` for table
cells, ``literal`` for whole texts, ``visible`` for plain ``typer.echo``.
"""

from __future__ import annotations

import re

from rich.markup import escape
from rich.text import Text

# Beyond C0: DEL, C1, the line/paragraph separators and the bidi and zero-width
# format characters a terminal would act on or hide.
_BEYOND_C0 = "\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff"
_ANY = re.compile(f"[\x00-\x1f{_BEYOND_C0}]")
# the same but tab (\x09) and newline (\x0a), for texts that keep their layout
_BUT_LAYOUT = re.compile(f"[\x00-\x08\x0b-\x1f{_BEYOND_C0}]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: object, *, lines: bool = False) -> str:
    """``value`` as text with every control character written as an escape; with
    ``lines``, newlines and tabs stay (a multi-line text keeps its layout)."""
    text = str(value)
    return (_BUT_LAYOUT if lines else _ANY).sub(_escaped, text)


def cell(value: object) -> Text:
    """A table cell: never markup, one line, nothing the terminal acts on."""
    return Text(visible(value))


def literal(value: object, *, lines: bool = True, style: str = "") -> Text:
    """A whole text (an ad, a log): never markup; newlines kept unless ``lines`` is off."""
    return Text(visible(value, lines=lines), style=style)


def markup_safe(value: object) -> str:
    """User text to put inside one of our own markup strings: escaped both ways."""
    return escape(visible(value))
