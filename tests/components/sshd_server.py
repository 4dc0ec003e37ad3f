"""A real OpenSSH server on loopback for tests: the "login node" of a remote cluster.

Recipe from notes/real-components.md §3: its own sshd_config, host key, pid
file and log in a private directory, a free port on 127.0.0.1, public-key
login only, and SFTP through internal-sftp. The test user `wmsuser` logs in
with a client key made here; its authorized_keys file is this directory's
(no change to the user's home). The directory is 0755 under /tmp because sshd
reads authorized_keys as the user; StrictModes is off because /tmp itself is
world-writable (sshd would refuse any key file below it). Session-scoped;
sshd is stopped by its pid file at the end.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

USER = "wmsuser"

CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {root}/host_ed25519_key
PidFile {root}/sshd.pid
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
AuthorizedKeysFile {root}/authorized_keys
StrictModes no
MaxSessions 64
Subsystem sftp internal-sftp
LogLevel INFO
"""


class SshdUnavailable(RuntimeError):
    """sshd is not installed or cannot run here (the test says whether to skip)."""


@dataclass
class Sshd:
    root: Path
    port: int

    @property
    def client_key(self) -> Path:
        return self.root / "client_key"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def log(self) -> Path:
        return self.root / "sshd.log"

    def logins(self) -> int:
        """Successful logins so far (each is one SSH connection)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text.count(f"Accepted publickey for {USER}")

    def user_dir(self, name: str) -> Path:
        """A fresh directory owned by the test user (pilot stand-ins write there)."""
        path = self.root / "user" / name
        path.mkdir(parents=True, mode=0o755)
        shutil.chown(path, USER, USER)
        return path

    def stop(self) -> None:
        try:
            pid = int((self.root / "sshd.pid").read_text().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def start_sshd() -> Sshd:
    """Configure and start sshd (as root); the caller stops it."""
    if not Path("/usr/sbin/sshd").exists() or shutil.which("ssh-keygen") is None:
        raise SshdUnavailable("sshd not installed (Debian: openssh-server)")
    if os.geteuid() != 0:
        raise SshdUnavailable("the test sshd runs as root to log the test user in")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        raise SshdUnavailable(f"test user {USER} does not exist") from None
    root = Path(tempfile.mkdtemp(prefix="glidewms-sshd-", dir="/tmp"))
    root.chmod(0o755)
    _keygen(root / "host_ed25519_key")
    _keygen(root / "client_key")
    shutil.copyfile(root / "client_key.pub", root / "authorized_keys")
    (root / "authorized_keys").chmod(0o644)
    port = _free_port()
    (root / "sshd_config").write_text(CONFIG.format(port=port, root=root))
    host_key = (root / "host_ed25519_key.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    Path("/run/sshd").mkdir(exist_ok=True, mode=0o755)
    sshd = Sshd(root, port)
    argv = ["/usr/sbin/sshd", "-f", str(root / "sshd_config"), "-E", str(sshd.log)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise SshdUnavailable(f"sshd did not start: {result.stderr.strip()}")
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                sshd.stop()
                raise SshdUnavailable(f"sshd not listening on {port}") from None
            time.sleep(0.05)
    return sshd


@pytest.fixture(scope="session")
def sshd() -> Iterator[Sshd]:
    """A real sshd on loopback for the session (import it into a test module)."""
    try:
        server = start_sshd()
    except (SshdUnavailable, subprocess.CalledProcessError, OSError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and sshd is unavailable: {exc}")
        pytest.skip(f"sshd unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
