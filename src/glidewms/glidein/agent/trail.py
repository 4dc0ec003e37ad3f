"""The pilot's trail: structured log records flushed to the factory, and its final report.

Records follow the factory's log endpoint (``POST /api/v1/glideins/{id}/log``,
pilot scope): ``{"time", "invoker", "pid", "severity", "type", "content",
"attachments": [{"name", "base64"}]}``, sent in batches ``{"records": [...],
"final": bool}`` at checkpoints (validation done, registration, every job's
end, exit) so that even a pilot killed by the site leaves what it had flushed.

Best effort throughout: a factory that does not have the endpoint (404, 405)
turns the trail off for the rest of the pilot's life, any other failure keeps
the records for the next flush (up to a bound), and nothing here ever raises
into the pilot. The token is never part of a record. The final report
(``POST /api/v1/glideins/{id}/report``) follows the final flush, best effort too.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from typing import Any, Dict, List, Optional

from .http import Api, HttpStatusError, TransportError, segment

log = logging.getLogger(__name__)

REPORT_PATIENCE = 120.0  # seconds a final report waits for an unreachable factory

SEVERITIES = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_CALL_BYTES = 900 * 1024  # the factory refuses more than 1 MiB per call
MAX_KEPT = 5000  # records kept while the factory is unreachable
MAX_CONTENT = 8000
MAX_ATTACHMENT = 64 * 1024


class Trail:
    """A buffer of records and the flushes that empty it."""

    def __init__(self, factory: Optional[Api], glidein_id: str, invoker: str = "agent") -> None:
        self.factory = factory
        self.glidein_id = glidein_id
        self.invoker = invoker
        self.enabled = factory is not None
        self.sent = 0
        self._records: List[Dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()

    def add(
        self, severity: str, kind: str, content: str, attachments: Optional[Dict[str, bytes]] = None
    ) -> None:
        """Queue one record (content and attachments are bounded in size)."""
        record: Dict[str, Any] = {
            "time": round(time.time(), 3),
            "invoker": self.invoker,
            "pid": os.getpid(),
            "severity": severity if severity in SEVERITIES else "INFO",
            "type": kind,
            "content": content[:MAX_CONTENT],
        }
        if attachments:
            record["attachments"] = [
                {"name": name, "base64": base64.b64encode(data[-MAX_ATTACHMENT:]).decode()}
                for name, data in attachments.items()
            ]
        with self._lock:
            self._records.append(record)
            del self._records[:-MAX_KEPT]

    def pending(self) -> int:
        with self._lock:
            return len(self._records)

    def flush(self, final: bool = False) -> bool:
        """Send what is queued, in calls under the size limit; True if all went out."""
        if not self.enabled or self.factory is None:
            return False
        with self._flush_lock:
            while True:
                with self._lock:
                    batch = _batch(self._records)
                if not batch and not final:
                    return True
                last = len(batch) == self.pending()
                body = {"records": batch, "final": final and last}
                try:
                    self.factory.call(
                        "POST",
                        f"glideins/{segment(self.glidein_id)}/log",
                        body,
                        timeout=10,
                        tries=2,
                    )
                except HttpStatusError as exc:
                    if exc.status in (404, 405):
                        log.info("the factory keeps no pilot logs (HTTP %d); trail off", exc.status)
                        self.enabled = False
                    else:
                        log.warning("trail not flushed: %s", exc)
                    return False
                except TransportError as exc:
                    log.warning("trail not flushed: %s", exc)
                    return False
                with self._lock:
                    del self._records[: len(batch)]
                self.sent += len(batch)
                if last:
                    return True

    def flush_loop(self, finished: threading.Event, every: float) -> None:
        """Flush what is queued every ``every`` seconds until ``finished``."""
        while not finished.wait(every):
            if self.pending():
                self.flush()

    def report(self, body: Dict[str, Any]) -> None:
        """The pilot's last word: an ``exit`` record, the final flush, then the
        final report (``exit_reason``, ``exit_code``, ``detail``...); errors logged.

        The report is waited for through a factory outage of up to
        REPORT_PATIENCE seconds: without it the factory cannot tell a pilot
        that failed validation from one that ended well, and entry health
        (factory/pilot_health.py) goes blind exactly when sites are in trouble.
        """
        if self.factory is None:
            log.warning("no factory URL; final report not sent")
            return
        self.add(
            "INFO" if body["exit_code"] == 0 else "ERROR",
            "exit",
            f"{body['exit_reason']}: {body['detail']}",
        )
        self.flush(final=True)
        try:
            self.factory.call(
                "POST",
                f"glideins/{segment(self.glidein_id)}/report",
                body,
                timeout=10,
                patience=REPORT_PATIENCE,
            )
            log.info("final report sent: %s", body["exit_reason"])
        except (HttpStatusError, TransportError) as exc:
            log.warning("final report not delivered: %s", exc)


def _batch(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The longest prefix of records whose JSON stays under MAX_CALL_BYTES."""
    size, count = 64, 0
    for record in records:
        size += len(json.dumps(record)) + 2
        if size > MAX_CALL_BYTES and count:
            break
        count += 1
    return records[:count]


class TrailHandler(logging.Handler):
    """Copies the pilot's own log lines (INFO and up) into the trail as ``log`` records."""

    def __init__(self, trail: Trail, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.trail = trail

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.trail.add(record.levelname, "log", f"{record.name}: {record.getMessage()}")
        except Exception:  # a logging handler must never raise
            self.handleError(record)
