"""Run validation scripts in order, collect structured results, gather what they publish.

Scripts are listed in ``scripts.list`` files (``STAGE PATH [period=SECONDS]
[container]`` per line, paths relative to the list): the factory stage's
``validation/scripts.list``, any list named in ``GLIDEIN_Script_Lists``
(comma-separated, relative to the work dir: entry and frontend-group
scripts) and the frontend's signed VO stage list (``GLIDEIN_VO_Scripts``,
written by the bootstrap), whose scripts all belong to the ``group`` stage.
A script marked ``container`` runs inside the container runtime that the
factory's ``container`` script chose, in the group's default image, with the
work dir bound at the same path (so it reads and writes glidein_config).

They run by stage, ``factory → entry → group → final``, keeping list order
within a stage; the first failure stops the run, because later scripts may
rely on what earlier ones checked.

Each script runs as ``SCRIPT GLIDEIN_CONFIG`` in the work dir, with
``GLIDEIN_RESULT_FILE`` naming where it writes its JSON result (see
``validation/gconfig.py``). A script that writes no result is judged by its
exit status (failure category WN_Resource); one that outlives its timeout is
killed with its process group and fails.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from . import container as containers
from . import forkrun
from .config import ConfigError, UnsafeValue, parse_lines, typed_value

log = logging.getLogger(__name__)

STAGES = ("factory", "entry", "group", "final")
CATEGORIES = ("WN_Resource", "Network", "Config", "VO_Config", "Corruption", "VO_Proxy")
STANDARD_LIST = os.path.join("validation", "scripts.list")
DEFAULT_TIMEOUT = 120.0
_TAIL = 500


@dataclass(frozen=True)
class Script:
    """One validation script as listed."""

    name: str
    path: str
    stage: str
    period: int = 0
    container: bool = False


@dataclass
class Result:
    """The structured outcome of one script run (sent in the final report)."""

    name: str
    stage: str
    status: str
    category: str = ""
    detail: str = ""
    seconds: float = 0.0
    slot_attrs: List[str] = field(default_factory=list)
    job_env: List[str] = field(default_factory=list)
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_report(self) -> Dict[str, Any]:
        """The result without the output tail (that goes to the trail)."""
        body = asdict(self)
        body.pop("output")
        return body


def parse_script_list(
    text: str, base_dir: str, source: str, stages: Tuple[str, ...] = STAGES
) -> List[Script]:
    """Parse a scripts.list; ConfigError names the file and line.

    ``stages``: the stages this list may name (a VO list: ``group`` only).
    """
    scripts = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        where = f"{source}:{number}"
        if len(words) < 2 or words[0] not in stages:
            raise ConfigError(
                f"{where}: expected 'STAGE PATH [period=N] [container]' with "
                f"STAGE one of {', '.join(stages)}, got {line!r}"
            )
        if words[1].startswith("/") or ".." in words[1].split("/"):
            raise ConfigError(f"{where}: the script path must stay under {base_dir}")
        period, in_container = 0, False
        for option in words[2:]:
            key, _, value = option.partition("=")
            if option == "container":
                in_container = True
            elif key == "period" and value.isdigit():
                period = int(value)
            else:
                raise ConfigError(f"{where}: unknown option {option!r} (period=SECONDS, container)")
        name = os.path.splitext(os.path.basename(words[1]))[0]
        scripts.append(
            Script(name, os.path.join(base_dir, words[1]), words[0], period, in_container)
        )
    return scripts


def discover(work_dir: str, values: Dict[str, str]) -> List[Script]:
    """Every listed script, sorted by stage (a stable sort keeps list order)."""
    lists: List[Tuple[str, Tuple[str, ...]]] = [(STANDARD_LIST, STAGES)]
    lists += [
        (p.strip(), STAGES) for p in values.get("GLIDEIN_Script_Lists", "").split(",") if p.strip()
    ]
    if values.get("GLIDEIN_VO_Scripts"):
        lists.append((values["GLIDEIN_VO_Scripts"], ("group",)))
    skip = {n.strip() for n in values.get("GLIDEIN_Validation_Skip", "").split(",") if n.strip()}
    scripts: List[Script] = []
    for relative, stages in lists:
        path = os.path.join(work_dir, relative)
        if not os.path.isfile(path):
            if relative != STANDARD_LIST:
                raise ConfigError(f"the script list {relative} does not exist")
            continue
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        scripts += [
            s
            for s in parse_script_list(text, os.path.dirname(path), relative, stages)
            if s.name not in skip
        ]
    return sorted(scripts, key=lambda s: STAGES.index(s.stage))


def _command(script: Script, config_path: str) -> List[str]:
    """How to start a script: python files with this interpreter, .sh with bash."""
    if script.path.endswith(".py"):
        return [sys.executable, script.path, config_path]
    if script.path.endswith(".sh"):
        return ["bash", script.path, config_path]
    os.chmod(script.path, os.stat(script.path).st_mode | 0o700)  # downloads lose the x bit
    return [script.path, config_path]


def run_script(
    script: Script, config_path: str, timeout: float = DEFAULT_TIMEOUT, fork: bool = False
) -> Result:
    """Run one script; never raises.

    ``fork``: run a Python script in a forked child of this process rather than a
    new interpreter (see ``forkrun``; only while the caller is single-threaded).
    """
    started = time.monotonic()
    fd, result_file = tempfile.mkstemp(
        prefix=f".result_{script.name}_", dir=os.path.dirname(config_path)
    )
    os.close(fd)
    env = dict(
        os.environ,
        GLIDEIN_RESULT_FILE=result_file,
        GLIDEIN_PYTHON=sys.executable,
        GLIDEIN_CONFIG=config_path,
    )
    result = Result(script.name, script.stage, "failed", "WN_Resource")
    cwd = os.path.dirname(config_path)
    try:
        if script.container:
            returncode, output, timed_out = _run_in_container(
                script, config_path, env, cwd, timeout
            )
        elif fork and script.path.endswith(".py") and forkrun.fork_allowed():
            returncode, output, timed_out = forkrun.run(
                script.path, [config_path], env, cwd, timeout
            )
        else:
            returncode, output, timed_out = _run_process(script, config_path, env, cwd, timeout)
    except (OSError, containers.ContainerError, ValueError) as exc:
        result.detail = f"cannot run {script.path}: {getattr(exc, 'strerror', None) or exc}"
        os.unlink(result_file)
        return result
    if timed_out:
        result.detail = f"timed out after {timeout:.0f}s"
    result.output = output.decode("utf-8", "replace")[-_TAIL:]
    result.seconds = round(time.monotonic() - started, 3)
    try:
        with open(result_file, encoding="utf-8") as handle:
            raw = handle.read()
    finally:
        os.unlink(result_file)
    if result.detail:  # timed out
        return result
    if raw.strip():
        _apply_result_file(result, raw)
    elif returncode == 0:
        result.status, result.category = "ok", ""
    else:
        result.detail = f"exit status {returncode}: {result.output.strip()[-200:]}"
    return result


def _run_in_container(
    script: Script, config_path: str, env: Dict[str, str], cwd: str, timeout: float
) -> Tuple[int, bytes, bool]:
    """The script inside the container runtime validation chose, in the default image.

    The work dir is bound at its own path (not ``/srv``), so every path in
    glidein_config stays true inside; the environment is only what a script
    needs (the result file, the config, PATH), never the pilot's.
    """
    values = read_values(config_path)
    setup = containers.ContainerSetup.from_values(values)
    if setup.runtime not in containers.RUNTIMES or not setup.path:
        raise containers.ContainerError(
            "it must run in a container and this node has no working container runtime"
        )
    image = setup.default_image
    command = _command(script, config_path)
    if command[0] == sys.executable:
        command[0] = "python3"  # the image's python, not the pilot's path on the host
    bind = containers.Bind(cwd, cwd)
    inner_env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": cwd,
        **{k: env[k] for k in ("GLIDEIN_RESULT_FILE", "GLIDEIN_CONFIG")},
    }
    inner_env["GLIDEIN_PYTHON"] = "python3"
    setup = containers.ContainerSetup(
        setup.runtime, setup.path, image, setup.use, (*setup.binds, bind), setup.gpu_devices
    )
    # a sandbox of its own (the scratch /srv) keeps the work dir's paths unmapped
    sandbox = tempfile.mkdtemp(prefix=".vo_sandbox_", dir=cwd)
    try:
        argv, outer_env = containers.wrap(setup, image, sandbox, command, inner_env)
        if setup.runtime == "bwrap":
            argv[argv.index("--chdir") + 1] = cwd
        else:
            argv[argv.index("--pwd") + 1] = cwd
        return _spawn(argv, outer_env, cwd, timeout)
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)


def _run_process(
    script: Script, config_path: str, env: Dict[str, str], cwd: str, timeout: float
) -> Tuple[int, bytes, bool]:
    """A new process in its own session; its group is killed on timeout."""
    return _spawn(_command(script, config_path), env, cwd, timeout)


def _spawn(
    argv: List[str], env: Dict[str, str], cwd: str, timeout: float
) -> Tuple[int, bytes, bool]:
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output, False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return proc.returncode, output, True


def _apply_result_file(result: Result, raw: str) -> None:
    try:
        body = json.loads(raw)
        status = body["status"]
        if status not in ("ok", "failed"):
            raise ValueError(f"status {status!r}")
        category = str(body.get("category") or "")
        if status == "failed" and category not in CATEGORIES:
            category = "WN_Resource"
        result.status, result.category = status, "" if status == "ok" else category
        result.detail = str(body.get("detail") or "")
        result.slot_attrs = [str(n) for n in body.get("slot_attrs") or []]
        result.job_env = [str(n) for n in body.get("job_env") or []]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        result.status, result.category = "failed", "Corruption"
        result.detail = f"unreadable result file: {exc}"


def run_all(
    scripts: List[Script], config_path: str, timeout: float = DEFAULT_TIMEOUT, fork: bool = False
) -> List[Result]:
    """Run scripts in order until one fails; return every result obtained."""
    results = []
    for script in scripts:
        result = run_script(script, config_path, timeout, fork)
        level = logging.INFO if result.ok else logging.ERROR
        log.log(
            level,
            "validation %s/%s: %s %s%s (%.2fs)",
            script.stage,
            script.name,
            result.status,
            result.category + ": " if result.category else "",
            result.detail,
            result.seconds,
        )
        results.append(result)
        if not result.ok:
            break
    return results


def published(
    values: Dict[str, str], results: List[Result]
) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Slot attributes and job environment from what the scripts declared.

    The declared list is the union of the scripts' ``slot_attrs``/``job_env``
    and the entry's ``GLIDEIN_Publish_Slot``/``GLIDEIN_Publish_Env`` keys;
    the values are the final glidein_config values.
    """
    slot_names: List[str] = []
    env_names: List[str] = []
    for result in results:
        slot_names += result.slot_attrs
        env_names += result.job_env
    slot_names += [n.strip() for n in values.get("GLIDEIN_Publish_Slot", "").split(",")]
    env_names += [n.strip() for n in values.get("GLIDEIN_Publish_Env", "").split(",")]
    attrs = {n: typed_value(values[n]) for n in slot_names if n and n in values}
    env = {n: values[n] for n in env_names if n and n in values}
    return attrs, env


def read_values(config_path: str) -> Dict[str, str]:
    """glidein_config as the scripts left it (UnsafeValue: a line is not one line)."""
    try:
        with open(config_path, encoding="utf-8", newline="") as handle:
            return parse_lines(handle.read())
    except UnicodeDecodeError as exc:
        raise UnsafeValue(f"{config_path} is not UTF-8 text: {exc}") from None


def failure_summary(results: List[Result]) -> Optional[str]:
    """``stage/name: category: detail`` of the failed script, or None."""
    for result in results:
        if not result.ok:
            return f"{result.stage}/{result.name}: {result.category}: {result.detail}"
    return None
