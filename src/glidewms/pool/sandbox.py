"""Content-addressed file store for job sandboxes (inputs and outputs).

A file's name is its sha256, so an upload is verified by construction and the
same input shared by 100k jobs is stored once.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

HEX64 = re.compile(r"^[0-9a-f]{64}$")


class BadDigest(ValueError):
    pass


class SandboxStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not HEX64.fullmatch(sha256):
            raise BadDigest(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    async def put_stream(self, sha256: str, chunks: AsyncIterator[bytes]) -> int:
        """Store the stream if and only if its digest is `sha256`; returns its size."""
        final = self.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
            if digest.hexdigest() != sha256:
                raise BadDigest(f"content has sha256 {digest.hexdigest()}, not {sha256}")
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return size
