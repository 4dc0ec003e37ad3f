"""Streaming a running job's stdout/stderr to the pool (``stream_output``,
``stream_error``), for its owner's ``glidewms tail``.

Every ``STREAM_INTERVAL`` seconds a thread sends what each streamed file
gained since the last call, at most ``CHUNK_BYTES`` per stream and call (the
pool's bound; pool/streams.py), so a job streams at most that much per
interval. More than ``KEEP_BYTES`` pending (the most the pool keeps) is
skipped ahead: the pool would drop it anyway. When the job ends, ``stop``
sends the rest before the result is reported: once the job completed the
pool takes no more, and its streamed text is then whole (within KEEP_BYTES).

The files are read through descriptors the pilot opened before the job
started, never by path afterwards: a job that swaps its stdout for a
symlink to a pilot secret still only streams its own stdout. A stream the
pool refuses (the claim is gone, a bound) stops; one the pool cannot be
reached for is retried on the next tick (the pilot's other calls matter
more: one try each).
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from typing import Dict, List, Tuple

from .http import Api, HttpStatusError, IncompatiblePeer, TransportError, segment

log = logging.getLogger(__name__)

STREAM_INTERVAL = 1.0  # seconds between sends of one job's streams
CHUNK_BYTES = 64 * 1024  # the pool's bound on one call
KEEP_BYTES = 1024 * 1024  # what the pool keeps per stream: more pending is skipped


def open_stream(sandbox: str, name: str, append: bool) -> int:
    """A read descriptor of the job's stdout/stderr file, created (or, when
    ``append``, kept as a checkpoint brought it) before the job starts."""
    path = os.path.join(sandbox, name)
    flags = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags if append else flags | os.O_TRUNC, 0o666)
    return fd


def next_chunk(
    sent: int, size: int, chunk: int = CHUNK_BYTES, keep: int = KEEP_BYTES
) -> Tuple[int, int]:
    """(where to read, how much) of a file of ``size`` bytes of which ``sent``
    went: never more than ``chunk``, and never older than the last ``keep``."""
    start = max(sent, size - keep)
    return start, max(0, min(chunk, size - start))


class Streamer:
    """One job's streams: ``{"out"|"err": descriptor}`` read from ``base`` on."""

    def __init__(
        self,
        pool: Api,
        claim_id: str,
        fds: Dict[str, int],
        *,
        interval: float = STREAM_INTERVAL,
    ) -> None:
        self.pool = pool
        self.claim_id = claim_id
        self.fds = dict(fds)
        # what the job's earlier runs wrote (a checkpoint's stdout) is not this run's
        self.base = {which: os.fstat(fd).st_size for which, fd in self.fds.items()}
        self.sent = dict(self.base)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"stream-{claim_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Send the rest (the job has ended), then close the descriptors."""
        self._stop.set()
        self._thread.join()
        try:
            while self.fds and self.send_once():
                pass
        finally:
            for fd in self.fds.values():
                os.close(fd)
            self.fds = {}

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.send_once()

    def send_once(self) -> bool:
        """One chunk per stream; whether any was sent (more may be pending)."""
        sent_any = False
        for which in list(self.fds):
            fd = self.fds[which]
            start, length = next_chunk(self.sent[which], os.fstat(fd).st_size)
            if length <= 0:
                continue
            data = os.pread(fd, length, start)
            if not data:
                continue
            body = {
                "which": which,
                "offset": start - self.base[which],
                "data": base64.b64encode(data).decode("ascii"),
            }
            try:
                self.pool.call(
                    "POST", f"claims/{segment(self.claim_id)}/stream", body, timeout=10, tries=1
                )
            except HttpStatusError as exc:
                log.warning("claim %s: std%s no longer streamed: %s", self.claim_id, which, exc)
                self._drop(which if exc.status != 409 else None)
                return False
            except (TransportError, IncompatiblePeer) as exc:
                log.info("claim %s: std%s not streamed now: %s", self.claim_id, which, exc)
                return False
            self.sent[which] = start + len(data)
            sent_any = True
        return sent_any

    def _drop(self, which: str | None) -> None:
        """Stop one stream (None: all of them; the claim is gone)."""
        names: List[str] = list(self.fds) if which is None else [which]
        for name in names:
            os.close(self.fds.pop(name))
