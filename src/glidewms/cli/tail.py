"""`glidewms tail JOB`: what a running job wrote to stdout or stderr (HTCondor's
condor_tail), for jobs submitted with `stream_output`/`stream_error`."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from glidewms import classads
from glidewms.cli.user import PoolOption, TokenOption, client, err, fail, job_ids
from glidewms.client import ClientError

ENDED = ("completed", "removed")


def streams(ad: str, which: str) -> bool:
    """Does the job's ad (text) say StreamOut/StreamErr = true? An ad that
    cannot be read is given the benefit of the doubt."""
    try:
        parsed = classads.parse_ad(ad, classads.CEILING)
    except classads.ClassAdError:
        return True
    name = "StreamOut" if which == "out" else "StreamErr"
    return classads.is_true(classads.eval_attr(parsed, name))


def tail(
    job_id: Annotated[str, typer.Argument(help="CLUSTER.PROC of a job that streams its output")],
    stderr: Annotated[bool, typer.Option("--stderr", help="stderr instead of stdout")] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing until the job ends")
    ] = False,
    maxbytes: Annotated[
        int, typer.Option("--maxbytes", min=1, max=1024 * 1024, help="bytes shown at first")
    ] = 1024,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, max=3600, help="seconds between polls (-f)")
    ] = 1.0,
    pool: PoolOption = None,
    token_file: TokenOption = None,
) -> None:
    """Show the end of a job's streamed stdout (or stderr); -f follows it."""
    [(cluster, proc)] = job_ids([job_id])
    jid, which = f"{cluster}.{proc or 0}", "err" if stderr else "out"
    sink = sys.stdout.buffer
    try:
        with client(pool, token_file) as c:
            part = c.stream(jid, which, None, maxbytes)
            if part.end == 0 and not streams(c.job(jid).get("ad") or "", which):
                name = "stream_error" if stderr else "stream_output"
                raise fail(
                    f"job {jid} does not stream its std{which}: submit it with {name} = true "
                    "(`glidewms fetch` brings its outputs once it completed)"
                )
            sink.write(part.data)
            sink.flush()
            at = part.offset + len(part.data)
            while follow:
                if part.state in ENDED and at >= part.end:
                    break
                if at >= part.end:  # nothing new yet: poll again later
                    time.sleep(interval)
                part = c.stream(jid, which, at, None)
                if part.offset > at:
                    err.print(f"[{part.offset - at} bytes dropped by the pool]")
                sink.write(part.data)
                sink.flush()
                at = part.offset + len(part.data)
    except ClientError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def register(app: typer.Typer) -> None:
    app.command()(tail)
