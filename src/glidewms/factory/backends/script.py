"""The job script of a pilot array, from the template `data/pilot_array.sh`.

- `pilot_arrays()`: pilots of one submission grouped into job arrays. Their
  arguments differ only by `--glidein-id`, so one script serves a whole array
  and picks the id by task index: 1000 pilots are one `sbatch`, not 1000.
- `render_script()`: the template holds the shape, the backends only the
  values. The bootstrap is embedded in the script, so the site needs no shared
  file system and no copy of glidewms: the rest of the pilot comes from the
  factory's stage.
- `walltime()`: the `H:MM:SS` most batch systems take for a time limit.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import glidewms
from glidewms.factory.backends.base import BackendError, PilotSubmission

TEMPLATE = "pilot_array.sh"
HEREDOC_END = "GLIDEWMS_BOOTSTRAP_END"
PLACEHOLDER = re.compile(r"@@([A-Z_]+)@@")


@dataclass(frozen=True)
class PilotArray:
    """Pilots that share one job script: the same arguments but their ids."""

    arguments: tuple[str, ...]
    glidein_ids: tuple[str, ...]
    token_file: Path


def common_arguments(pilot: PilotSubmission) -> tuple[str, ...]:
    """The pilot's arguments without its own `--glidein-id ID` pair."""
    args = list(pilot.arguments)
    for i in range(len(args) - 1):
        if args[i] == "--glidein-id" and args[i + 1] == pilot.glidein_id:
            del args[i : i + 2]
            return tuple(args)
    return tuple(args)


def pilot_arrays(pilots: Sequence[PilotSubmission], max_size: int) -> list[PilotArray]:
    """Group pilots into arrays of at most `max_size`, keeping their order.

    Consecutive pilots with the same common arguments and token file share an
    array, so the ids the backend returns line up with `pilots`.
    """
    arrays: list[PilotArray] = []
    for pilot in pilots:
        args = common_arguments(pilot)
        last = arrays[-1] if arrays else None
        if (
            last is not None
            and last.arguments == args
            and last.token_file == pilot.token_file
            and len(last.glidein_ids) < max_size
        ):
            arrays[-1] = PilotArray(args, (*last.glidein_ids, pilot.glidein_id), last.token_file)
        else:
            arrays.append(PilotArray(args, (pilot.glidein_id,), pilot.token_file))
    return arrays


def shell_words(words: Sequence[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def template_text(name: str = TEMPLATE) -> str:
    return (Path(glidewms.__file__).resolve().parent / "data" / name).read_text()


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill `@@NAME@@` placeholders; a missing or unused value is a bug, said loudly."""
    used: set[str] = set()

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template placeholder @@{key}@@ has no value")
        used.add(key)
        return values[key]

    text = PLACEHOLDER.sub(fill, template)
    unused = set(values) - used
    if unused:
        raise KeyError(f"values not in the template: {sorted(unused)}")
    return text


def render_script(
    array: PilotArray,
    *,
    directives: Sequence[str],
    task_index: str,
    job_ref: str,
    token_file: str,
    bootstrap: str,
    environment: Mapping[str, str],
) -> str:
    """The job script of one pilot array (see data/pilot_array.sh).

    `task_index` is a shell arithmetic expression giving the 0-based task
    index (e.g. `${SGE_TASK_ID:-1} - 1`); `job_ref` a shell word naming the
    batch job in the pilot's log.
    """
    if any(line.strip() == HEREDOC_END for line in bootstrap.splitlines()):
        raise BackendError(f"the bootstrap contains the line {HEREDOC_END}: cannot embed it")
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(environment.items()))
    return render(
        template_text(),
        {
            "DIRECTIVES": "\n".join(directives),
            "GLIDEIN_IDS": shell_words(array.glidein_ids),
            "TASK_INDEX": task_index,
            "TOKEN_FILE": shlex.quote(token_file),
            "ENVIRONMENT": exports,
            "BOOTSTRAP": bootstrap.rstrip("\n"),
            "JOB_REF": job_ref,
            "ARGUMENTS": shell_words(array.arguments),
        },
    )


def walltime(seconds: int) -> str:
    """Seconds as `H:MM:SS` (hours unbounded), as Grid Engine and PBS spell a limit."""
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
