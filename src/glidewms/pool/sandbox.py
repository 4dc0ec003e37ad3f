"""Content-addressed file store for job sandboxes (inputs and outputs).

A file's name is its sha256, so an upload is verified by construction and the
same input shared by 100k jobs is stored once. Uploads stream into a
temporary file that becomes the file only once complete, verified and within
the size cap; anything else leaves nothing behind. The store is readable by
the pool's account only (job inputs and outputs are private: access.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

HEX64 = re.compile(r"^[0-9a-f]{64}$")


class BadDigest(ValueError):
    pass


class TooLarge(ValueError):
    """An upload past the size cap."""


class SandboxStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    def path(self, sha256: str) -> Path:
        if not HEX64.fullmatch(sha256):
            raise BadDigest(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    async def put_stream(
        self, sha256: str, chunks: AsyncIterator[bytes], most: int | None = None
    ) -> int:
        """Store the stream if and only if its digest is `sha256` and it has at
        most `most` bytes (TooLarge as soon as it passes them); returns its size."""
        final = self.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                size = await _digest(sha256, chunks, most, f.write)
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return size

    async def verify_stream(
        self, sha256: str, chunks: AsyncIterator[bytes], most: int | None = None
    ) -> int:
        """Read the stream as `put_stream` would, keeping nothing: the uploader
        proves it has the content of a file already stored."""
        self.path(sha256)
        return await _digest(sha256, chunks, most, lambda _: None)


async def _digest(
    sha256: str, chunks: AsyncIterator[bytes], most: int | None, sink: Callable[[bytes], object]
) -> int:
    digest, size = hashlib.sha256(), 0
    async for chunk in chunks:
        size += len(chunk)
        if most is not None and size > most:
            raise TooLarge(f"upload of more than {most} bytes")
        digest.update(chunk)
        sink(chunk)
    if digest.hexdigest() != sha256:
        raise BadDigest(f"content has sha256 {digest.hexdigest()}, not {sha256}")
    return size
