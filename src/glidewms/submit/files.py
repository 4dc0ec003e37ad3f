"""Where the job runs from and what travels with it.

Paths follow condor_submit: the executable is relative to the submit directory
(condor_submit's working directory; here the submit file's directory), every
other file to `initialdir`. The transfer settings are validated with
condor_submit's rules (no input or output lists with `should_transfer_files =
NO`; `ON_EXIT_OR_EVICT` needs YES). Names in `transfer_input_files` that are
URLs are fetched on the execute node by a transfer plugin for their scheme,
so the job asks for a slot whose `HasFileTransferPluginMethods` lists it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from glidewms.submit import environ
from glidewms.submit.exprs import quote

if TYPE_CHECKING:
    from glidewms.submit.build import Got, JobBuilder

_SHOULD = {"YES", "NO", "IF_NEEDED"}
_WHEN = {"ON_EXIT", "ON_EXIT_OR_EVICT", "ON_SUCCESS", "NEVER"}
_URL_SCHEMES = ("http", "https")


def iwd(job: JobBuilder) -> None:
    """The job's initial directory, and the transfer mode (which the executable needs)."""
    if got := job.get("initialdir"):
        path = Path(os.path.normpath(job.ctx.base_dir / got.value))
        if not path.is_dir():
            raise job.fail(got, f"no such directory: {got.value!r}")
        job.iwd = path
    job.ctx.functions.cwd = job.iwd
    job.attrs["Iwd"] = quote(str(job.iwd))
    _should_when(job)


def executable(job: JobBuilder) -> Path | None:
    if shell := job.get("shell"):
        job.attrs["Cmd"] = quote("/bin/sh")
        job.attrs["TransferExecutable"] = "false"
        job.flags["shell"] = shell.value
        return None
    given = job.get("executable")
    if given is None:
        if job.flags.get("container"):  # the image's own entry point runs
            job.attrs["Cmd"] = quote("")
            job.attrs["TransferExecutable"] = "false"
            return None
        raise job.fail(None, "no executable given for this queue statement")
    transfer = job.boolean("transfer_executable", True)
    if job.flags.get("should") == "NO" and transfer:  # run in place, on a shared file system
        path = local(job, given, given.value, job.ctx.base_dir)
        job.attrs["Cmd"] = quote(str(path))
        job.attrs["TransferExecutable"] = "false"
        return None
    if not transfer:  # a path on the execute node; relative: in the job's sandbox
        job.attrs["Cmd"] = quote(given.value)
        job.attrs["TransferExecutable"] = "false"
        return None
    path = local(job, given, given.value, job.ctx.base_dir)
    if job.ctx.stat(path)[1]:
        raise job.fail(given, f"{given.value!r} is a directory")
    job.attrs["Cmd"] = quote(str(path))
    job.attrs["TransferExecutable"] = "true"
    return path


def arguments(job: JobBuilder) -> list[str]:
    if "shell" in job.flags:
        args = ["-c", str(job.flags["shell"])]
    elif got := job.get("arguments"):
        args = environ.parse_arguments(got.value, lambda m: job.fail(got, m))
    else:
        args = []
    job.attrs["Arguments"] = quote(environ.v2_arguments(args))
    return args


def environment(job: JobBuilder) -> dict[str, str]:
    env: dict[str, str] = {}
    got = job.get("environment")
    if got is not None:
        env = environ.parse_environment(got.value, lambda m: job.fail(got, m))
    if wanted := job.get("getenv"):
        old = got is not None and not got.value.startswith('"')
        env = {**environ.imported(wanted.value, job.ctx.environ, env, old), **env}
    job.attrs["Environment"] = quote(environ.v2_environment(env))
    return env


def local(job: JobBuilder, got: Got, name: str, base: Path) -> Path:
    path = Path(os.path.normpath(base / name))
    if not job.ctx.stat(path)[0]:
        raise job.fail(got, f"no such file: {name!r} (looked for {path})")
    return path


def transfer(job: JobBuilder) -> None:
    should, when = str(job.flags["should"]), str(job.flags["when"])
    inputs = job.get("transfer_input_files")
    outputs = job.get("transfer_output_files")
    if should == "NO" and (inputs or outputs):
        raise job.fail(inputs or outputs, "files to transfer, but should_transfer_files = NO")
    names: list[str] = []
    if inputs:
        for name in _split(_strip(inputs.value)):
            if "://" in name:
                scheme = name.split("://", 1)[0].lower()
                if scheme not in _URL_SCHEMES:
                    raise job.fail(
                        inputs,
                        f"not supported by glidewms: {scheme}:// inputs (http and https URLs are)",
                    )
                job.urls.append(name)
                names.append(name)
                continue
            path = local(job, inputs, name, job.iwd)
            job.inputs.append(path)
            names.append(str(path) + ("/" if name.endswith("/") and job.ctx.stat(path)[1] else ""))
    if names:
        job.attrs["TransferInput"] = quote(",".join(names))
    if job.urls:
        schemes = sorted({u.split("://", 1)[0].lower() for u in job.urls})
        job.attrs["WantTransferPluginMethods"] = quote(",".join(schemes))
        job.clauses += [
            f'stringListIMember("{s}", TARGET.HasFileTransferPluginMethods)' for s in schemes
        ]
    _std_streams(job, should)
    if outputs is not None:  # `transfer_output_files = ""`: transfer nothing back
        listed = _split(_strip(outputs.value))
        job.flags["transfer_output"] = listed
        job.attrs["TransferOutput"] = quote(",".join(listed))
    _remaps(job)
    if got := job.get("x509userproxy"):
        proxy = local(job, got, got.value, job.iwd)
        job.attrs["x509userproxy"] = quote(str(proxy))
        job.inputs.append(proxy)
    elif job.boolean("use_x509userproxy", False):
        _default_proxy(job)
    if should == "NO":
        job.attrs["FileSystemDomain"] = quote(socket.getfqdn())
        job.clauses.append("TARGET.FileSystemDomain == MY.FileSystemDomain")
    job.attrs["ShouldTransferFiles"] = quote(should)
    if should != "NO":
        job.attrs["WhenToTransferOutput"] = quote(when)


def _should_when(job: JobBuilder) -> tuple[str, str]:
    got_should, got_when = job.get("should_transfer_files"), job.get("when_to_transfer_output")
    should_text = got_should.value if got_should else "YES"
    should = should_text.upper()
    when_text = got_when.value if got_when else ("NEVER" if should == "NO" else "ON_EXIT")
    when = when_text.upper()
    if should not in _SHOULD:
        raise job.fail(got_should, f"expected one of IF_NEEDED, NO, YES, got {should_text!r}")
    if when not in _WHEN:
        raise job.fail(
            got_when,
            f"expected one of ON_EXIT, ON_EXIT_OR_EVICT, ON_SUCCESS, got {when_text!r}",
        )
    if (should == "NO") != (when == "NEVER"):
        raise job.fail(
            got_when or got_should,
            f"when_to_transfer_output = {when} contradicts should_transfer_files = {should}",
        )
    if when == "ON_EXIT_OR_EVICT" and should == "IF_NEEDED":
        raise job.fail(
            got_when,
            "ON_EXIT_OR_EVICT and should_transfer_files = IF_NEEDED are "
            "incompatible (condor_submit refuses them too); use YES",
        )
    job.flags["should"], job.flags["when"] = should, when
    return should, when


def _std_streams(job: JobBuilder, should: str) -> None:
    if stdin := job.get("input"):
        path = Path(os.path.normpath(job.iwd / stdin.value))
        if job.boolean("transfer_input", True) and should != "NO":
            path = local(job, stdin, stdin.value, job.iwd)
            job.inputs.append(path)
        else:
            job.attrs["TransferIn"] = "false"
        job.attrs["In"] = quote(str(path))
    for key, attr, flag, stream, keep, stream_attr in (
        ("output", "Out", "out", "stream_output", "transfer_output", "StreamOut"),
        ("error", "Err", "err", "stream_error", "transfer_error", "StreamErr"),
    ):
        streamed = job.boolean(stream, False)
        kept = job.boolean(keep, True)
        if got := job.get(key):
            stream_path = os.path.normpath(job.iwd / got.value)
            job.attrs[attr] = quote(stream_path)
            job.flags[flag] = stream_path
        if not kept:
            job.attrs[{"Out": "TransferOut", "Err": "TransferErr"}[attr]] = "false"
        elif job.get(stream) is not None:
            job.attrs[stream_attr] = "true" if streamed else "false"
    if got := job.get("log"):
        job.attrs["UserLog"] = quote(os.path.normpath(job.iwd / got.value))


def _remaps(job: JobBuilder) -> None:
    got = job.get("transfer_output_remaps")
    if got is None:
        return
    remaps = _strip(got.value)
    for entry in (e for e in _split_remaps(remaps) if e.strip()):
        source, eq, target = entry.partition("=")
        if not eq or not source.strip() or not target.strip():
            raise job.fail(got, f"expected name = destination; ..., got {entry.strip()!r}")
        if "://" in target:
            raise job.fail(
                got,
                "not supported by glidewms: URL destinations (outputs come "
                "back with glidewms fetch)",
            )
    job.attrs["TransferOutputRemaps"] = quote(remaps)


def _split_remaps(text: str) -> list[str]:
    """Split on `;` not escaped with a backslash (HTCondor's remap syntax)."""
    parts, current, i = [], "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            current += text[i : i + 2]
            i += 2
            continue
        if text[i] == ";":
            parts.append(current)
            current = ""
        else:
            current += text[i]
        i += 1
    parts.append(current)
    return parts


def _default_proxy(job: JobBuilder) -> None:
    name = job.ctx.environ.get("X509_USER_PROXY") or f"/tmp/x509up_u{os.getuid()}"
    path = Path(name)
    if not path.is_file():
        got = job.get("use_x509userproxy")
        raise job.fail(
            got, f"use_x509userproxy: no proxy at {name} (set X509_USER_PROXY or x509userproxy)"
        )
    job.attrs["x509userproxy"] = quote(str(path))
    job.inputs.append(path)


def _strip(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _split(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]
