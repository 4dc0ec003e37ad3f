"""The stage: the files a pilot downloads, and the signed manifest that vouches for them.

At startup the factory copies the pilot agent (`agent/`) and the standard
validation scripts (`validation/`) into `<state_dir>/stage/` and writes
`<state_dir>/stage/manifest` in `sha256sum` format. Two things vouch for it:

- the sha256 of the manifest travels in every pilot's submission
  (`--manifest-sha256`), so a pilot refuses a manifest or a file that was
  changed on the way or on disk after it was submitted;
- an Ed25519 signature of the manifest (`manifest.sig`, raw 64 bytes), made
  with the factory's stage key (`<state_dir>/keys/stage_signing.pem`,
  generated on first use, 0600). The public key travels in the submission
  too (`--manifest-key`, base64 DER), and the bootstrap verifies with
  `openssl pkeyutl -verify -rawin` (OpenSSL >= 3.0).

Copying (rather than serving the installed package in place) pins what pilots
get to what was hashed and signed.

`build_vo_stage` makes the frontend's (VO) stage the same way: a directory of
VO validation scripts with a `scripts.list` at its root (every line a
`group` one, optionally `container`), copied, listed in a manifest and
signed with the frontend's own key. It is served with the same layout as
the factory's stage (`BASE/manifest`, `BASE/files/PATH`, the signature as
`BASE/files/manifest.sig`: `Stage.file` answers both) and named to pilots by
`--vo-stage BASE --vo-manifest-sha256 HEX --vo-manifest-key B64`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import glidewms

GLIDEIN_DIR = Path(glidewms.__file__).resolve().parent / "glidein"
DEFAULT_AGENT_DIR = GLIDEIN_DIR / "agent"
DEFAULT_VALIDATION_DIR = GLIDEIN_DIR / "validation"
DEFAULT_BOOTSTRAP = GLIDEIN_DIR / "bootstrap" / "glidein_startup.sh"
SIGNATURE_NAME = "manifest.sig"
KEY_NAME = "stage_signing.pem"
SHIPPED_SUFFIXES = (".py", ".sh", ".list")


def bootstrap_path() -> Path:
    """The bootstrap script backends run on the worker node (shipped in the package)."""
    return DEFAULT_BOOTSTRAP


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, kw_only=True)
class Stage:
    """A built stage: where it is, what it lists, the manifest's hash and signing key."""

    root: Path
    files: dict[str, str]  # relative path -> sha256
    manifest_sha256: str
    public_key_b64: str = ""  # base64 DER SubjectPublicKeyInfo: the --manifest-key value

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest"

    @property
    def signature_path(self) -> Path:
        return self.root / SIGNATURE_NAME

    def file(self, relative: str) -> Path | None:
        """The on-disk path of a listed file (or of the manifest signature), or None.

        Only files named in the manifest, plus its signature, are ever served,
        which rules out path traversal whatever the request path looks like.
        """
        if relative == SIGNATURE_NAME and self.signature_path.is_file():
            return self.signature_path
        if relative not in self.files:
            return None
        return self.root / relative


def _sources(directory: Path) -> list[Path]:
    """The shipped files of a directory tree (code and lists), in a stable order."""
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file()
        and p.suffix in SHIPPED_SUFFIXES
        and "__pycache__" not in p.relative_to(directory).parts
    )


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The factory's stage signing key; created (0600) if absent."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: expected an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)
    return key


def public_key_b64(key: Ed25519PrivateKey) -> str:
    """The public key as base64 DER (SubjectPublicKeyInfo): one argv-safe word."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def build_stage(
    state_dir: Path,
    agent_dir: Path | None = None,
    validation_dir: Path | None = None,
    key_path: Path | None = None,
) -> Stage:
    """(Re)build `<state_dir>/stage`, write its manifest and sign it.

    The standard validation scripts ship with the packaged agent; a custom
    `agent_dir` (a test's, or an operator's own agent) brings its own
    `validation_dir`, or none.
    """
    if validation_dir is None and agent_dir is None:
        validation_dir = DEFAULT_VALIDATION_DIR
    trees = {"agent": agent_dir or DEFAULT_AGENT_DIR, "validation": validation_dir}
    root = Path(state_dir) / "stage"
    files: dict[str, str] = {}
    for name, source_dir in trees.items():
        target = root / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        if source_dir is None or not source_dir.is_dir():
            continue
        for source in _sources(source_dir):
            relative = source.relative_to(source_dir)
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
            files[f"{name}/{relative.as_posix()}"] = sha256_file(destination)
    key = load_or_create_key(key_path or Path(state_dir) / "keys" / KEY_NAME)
    return _sign(root, files, key)


def _sign(root: Path, files: dict[str, str], key: Ed25519PrivateKey) -> Stage:
    """Write the manifest (sha256sum format) and its signature; the signature first,
    so a reader never sees a new manifest with an old signature for long."""
    text = "".join(f"{digest}  {path}\n" for path, digest in sorted(files.items()))
    data = text.encode()
    for name, content in ((SIGNATURE_NAME, key.sign(data)), ("manifest", data)):
        tmp = root / f".{name}.tmp"
        tmp.write_bytes(content)
        tmp.replace(root / name)
    return Stage(
        root=root,
        files=files,
        manifest_sha256=hashlib.sha256(data).hexdigest(),
        public_key_b64=public_key_b64(key),
    )


def build_vo_stage(source_dir: Path, out_dir: Path, key_path: Path) -> Stage:
    """Build and sign a frontend (VO) stage from `source_dir` into `out_dir`.

    `source_dir` holds `scripts.list` and the scripts it names (and any file
    they need); every regular file is shipped. The list is checked here the
    way the pilot reads it, so a bad line or a missing script is refused with
    its file and line rather than failing every pilot. `out_dir` is replaced.
    """
    from glidewms.glidein.agent.config import ConfigError
    from glidewms.glidein.agent.validation import parse_script_list

    source_dir = Path(source_dir)
    listing = source_dir / "scripts.list"
    if not listing.is_file():
        raise ValueError(f"{source_dir}: a VO stage needs a scripts.list")
    try:
        scripts = parse_script_list(listing.read_text(), str(source_dir), str(listing), ("group",))
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    for script in scripts:
        if not Path(script.path).is_file():
            raise ValueError(f"{listing}: {script.path} does not exist")
    root = Path(out_dir)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    files: dict[str, str] = {}
    for source in sorted(p for p in source_dir.rglob("*") if p.is_file()):
        relative = source.relative_to(source_dir)
        if "__pycache__" in relative.parts or relative.as_posix() in ("manifest", SIGNATURE_NAME):
            continue
        destination = root / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        files[relative.as_posix()] = sha256_file(destination)
    return _sign(root, files, load_or_create_key(Path(key_path)))
