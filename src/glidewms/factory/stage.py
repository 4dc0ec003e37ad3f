"""The stage: the files a pilot downloads, and the manifest that vouches for them.

At startup the factory copies the pilot agent into `<state_dir>/stage/agent/`
and writes `<state_dir>/stage/manifest` in `sha256sum` format. The sha256 of
the manifest itself travels in every pilot's submission (`--manifest-sha256`),
so a pilot refuses a manifest or a file that was changed on the way or on disk
after it was submitted. Copying (rather than serving the installed package in
place) pins what pilots get to what was hashed.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import glidewms

GLIDEIN_DIR = Path(glidewms.__file__).resolve().parent / "glidein"
DEFAULT_AGENT_DIR = GLIDEIN_DIR / "agent"
DEFAULT_BOOTSTRAP = GLIDEIN_DIR / "bootstrap" / "glidein_startup.sh"


def bootstrap_path() -> Path:
    """The bootstrap script backends run on the worker node (shipped in the package)."""
    return DEFAULT_BOOTSTRAP


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Stage:
    """A built stage: where it is, what it lists, and the manifest's own hash."""

    root: Path
    files: dict[str, str]  # relative path -> sha256
    manifest_sha256: str

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest"

    def file(self, relative: str) -> Path | None:
        """The on-disk path of a listed file, or None.

        Only files named in the manifest are ever served, which rules out path
        traversal whatever the request path looks like.
        """
        if relative not in self.files:
            return None
        return self.root / relative


def _agent_sources(agent_dir: Path) -> list[Path]:
    """The agent's Python files, sub-packages included, in a stable order."""
    return sorted(
        p
        for p in agent_dir.rglob("*.py")
        if p.is_file() and "__pycache__" not in p.relative_to(agent_dir).parts
    )


def build_stage(state_dir: Path, agent_dir: Path | None = None) -> Stage:
    """(Re)build `<state_dir>/stage` from the agent package and write its manifest."""
    agent_dir = agent_dir or DEFAULT_AGENT_DIR
    root = Path(state_dir) / "stage"
    target = root / "agent"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    files: dict[str, str] = {}
    if agent_dir.is_dir():
        for source in _agent_sources(agent_dir):
            relative = source.relative_to(agent_dir)
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
            files[f"agent/{relative.as_posix()}"] = sha256_file(destination)
    text = "".join(f"{digest}  {path}\n" for path, digest in sorted(files.items()))
    data = text.encode()
    tmp = root / ".manifest.tmp"
    tmp.write_bytes(data)
    tmp.replace(root / "manifest")
    return Stage(root=root, files=files, manifest_sha256=hashlib.sha256(data).hexdigest())
