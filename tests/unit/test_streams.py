"""Streamed stdout/stderr: the pool's placing and reading rule and the pilot's
choice of what to send next, as pure functions; the pilot's checkpoint file
choice and claim parsing with plain files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from glidewms.cli import tail
from glidewms.glidein.agent import streams as pilot_streams
from glidewms.glidein.agent.jobs import (
    JobProcess,
    JobSetupError,
    JobSpec,
    checkpoint_names,
    snapshot,
)
from glidewms.pool import streams
from glidewms.pool.streams import Kept, Placed, place, window

A, B = "claimA", "claimB"


@pytest.mark.parametrize(
    ("kept", "claim", "offset", "size", "keep", "placed"),
    [
        (Kept(), A, 0, 3, 10, Placed(Kept(A, 0, 0, 3), 0, 0, False)),  # the first chunk
        (Kept(A, 0, 0, 3), A, 3, 2, 10, Placed(Kept(A, 0, 0, 5), 0, 3, False)),  # appended
        (Kept(A, 0, 0, 3), A, 0, 3, 10, Placed(Kept(A, 0, 0, 3), 3, 3, False)),  # a retry
        (Kept(A, 0, 0, 3), A, 1, 3, 10, Placed(Kept(A, 0, 0, 4), 2, 3, False)),  # an overlap
        (Kept(A, 0, 0, 3), A, 1, 1, 10, Placed(Kept(A, 0, 0, 3), 1, 3, False)),  # nothing new
        (Kept(A, 0, 0, 3), A, 5, 1, 10, Placed(Kept(A, 0, 5, 6), 0, 5, True)),  # a gap
        (Kept(A, 0, 0, 3), B, 0, 2, 10, Placed(Kept(B, 3, 0, 5), 0, 3, False)),  # a new run
        (Kept(B, 3, 0, 5), B, 2, 1, 10, Placed(Kept(B, 3, 0, 6), 0, 5, False)),
        (Kept(A, 0, 0, 8), A, 8, 4, 10, Placed(Kept(A, 0, 2, 12), 0, 8, False)),  # the cap
        (Kept(), A, 0, 13, 10, Placed(Kept(A, 0, 3, 13), 0, 0, False)),  # one chunk > cap
        (Kept(A, 0, 2, 12), A, 1, 2, 10, Placed(Kept(A, 0, 2, 12), 2, 12, False)),  # dropped
    ],
)
def test_place(kept: Kept, claim: str, offset: int, size: int, keep: int, placed: Placed) -> None:
    assert place(kept, claim, offset, size, keep) == placed


@pytest.mark.parametrize(
    ("offset", "limit", "answer"),
    [
        (None, 3, (17, 3)),  # the last bytes
        (None, 100, (10, 10)),
        (10, 4, (10, 4)),
        (0, 4, (10, 4)),  # before the kept text: from its start
        (15, 100, (15, 5)),
        (20, 5, (20, 0)),  # the end: nothing yet
        (99, 5, (20, 0)),  # past the end: the end
    ],
)
def test_window(offset: int | None, limit: int, answer: tuple[int, int]) -> None:
    assert window(Kept(A, 0, 10, 20), offset, limit) == answer


def test_the_pilot_and_the_pool_agree_on_the_bounds() -> None:
    assert pilot_streams.CHUNK_BYTES == streams.CHUNK_BYTES
    assert pilot_streams.KEEP_BYTES == streams.KEEP_BYTES


@pytest.mark.parametrize(
    ("sent", "size", "answer"),
    [
        (0, 0, (0, 0)),
        (0, 5, (0, 5)),
        (5, 5, (5, 0)),
        (0, 100, (0, 30)),  # at most a chunk
        (10, 1000, (900, 30)),  # more than the pool keeps pending: skipped ahead
        (950, 1000, (950, 30)),
    ],
)
def test_next_chunk(sent: int, size: int, answer: tuple[int, int]) -> None:
    assert pilot_streams.next_chunk(sent, size, chunk=30, keep=100) == answer


def spec(**job: object) -> JobSpec:
    return JobSpec.from_claim({"cmd": "/bin/true", **job})


def test_a_claim_names_checkpoint_and_streams() -> None:
    s = spec(checkpoint_exit_code=85, checkpoint_files=["a", "b"], stream_out=True)
    assert (s.checkpoint_exit_code, s.checkpoint_files, s.stream_out, s.stream_err) == (
        85,
        ["a", "b"],
        True,
        False,
    )
    plain = spec()
    assert plain.checkpoint_exit_code is None and plain.checkpoint_files is None
    with pytest.raises(JobSetupError, match="checkpoint_exit_code"):
        spec(checkpoint_exit_code="85")


def test_checkpoint_files_are_the_named_ones_with_stdout_and_stderr(tmp_path: Path) -> None:
    (tmp_path / "input.dat").write_text("in")
    baseline = snapshot(str(tmp_path))
    for name in ("out.txt", "err.txt", "state", "scratch"):
        (tmp_path / name).write_text(name)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "state")
    named = spec(
        out="out.txt", err="err.txt", checkpoint_files=["state", "link", "gone", "sub/deep"]
    )
    assert checkpoint_names(named, str(tmp_path), baseline) == ["out.txt", "err.txt", "state"]
    # without transfer_checkpoint_files: what output transfer would send
    default = spec(out="out.txt", err="err.txt")
    assert checkpoint_names(default, str(tmp_path), baseline) == [
        "out.txt",
        "err.txt",
        "scratch",
        "state",
    ]


@pytest.mark.parametrize(("append", "content"), [(True, "old\nnew\n"), (False, "new\n")])
def test_stdout_a_checkpoint_brought_is_appended_to(tmp_path: Path, append: bool, content: str):
    (tmp_path / "out.txt").write_text("old\n")
    job = spec(cmd="/bin/echo", args=["new"], out="out.txt")
    names = frozenset({"out.txt"}) if append else frozenset()
    process = JobProcess(job, str(tmp_path), {"PATH": "/usr/bin:/bin"}, append=names)
    assert process.run() == 0
    assert (tmp_path / "out.txt").read_text() == content


def test_a_streamed_file_is_read_through_the_pilots_descriptor(tmp_path: Path) -> None:
    """A job that swaps its stdout for a symlink to a secret streams its stdout."""
    (tmp_path / "secret").write_text("token")
    fd = pilot_streams.open_stream(str(tmp_path), "out.txt", False)
    try:
        (tmp_path / "out.txt").write_text("mine\n")
        swapped = tmp_path / "swap"
        swapped.symlink_to(tmp_path / "secret")
        swapped.rename(tmp_path / "out.txt")
        assert os.pread(fd, 100, 0) == b"mine\n"
    finally:
        os.close(fd)
    (tmp_path / "link.txt").symlink_to(tmp_path / "secret")
    with pytest.raises(OSError):  # never opened through a symlink
        pilot_streams.open_stream(str(tmp_path), "link.txt", True)


@pytest.mark.parametrize(
    ("ad", "which", "streams"),
    [
        ('[ Cmd = "x"; StreamOut = true; Out = "o" ]', "out", True),
        ('[ Cmd = "x"; StreamOut = true ]', "err", False),
        ('[ Cmd = "x"; StreamErr = true ]', "err", True),
        ('[ Args = "x; StreamOut = true" ]', "out", False),  # only the attribute counts
        ('[ Cmd = "x"; StreamOut = false ]', "out", False),
    ],
)
def test_tail_tells_a_job_that_does_not_stream(ad: str, which: str, streams: bool) -> None:
    assert tail.streams(ad, which) is streams
