# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A real OpenSSH server on a free 127.0.0.1 port, for playbooks that must run "on the registry VM".

The daemon is the system's ``/usr/sbin/sshd`` with a configuration, host key and authorized key made
for one test: nothing of the machine's own SSH setup is read or changed, except that ``/run/sshd``
(the privilege-separation directory sshd insists on) is created when missing.
It runs in the foreground (``-D -e``), so its PID is the one we started and stop.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import socket
import subprocess
import time

SSHD_BINARY = pathlib.Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
SFTP_SERVER = pathlib.Path("/usr/lib/openssh/sftp-server")
PRIVSEP_DIR = pathlib.Path("/run/sshd")
LOOPBACK = "127.0.0.1"


class SshServerError(RuntimeError):
    """The SSH server could not be prepared or did not come up."""


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _keygen(path: pathlib.Path, comment: str) -> None:
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


@dataclasses.dataclass
class SshServer:
    """One sshd, its keys and the client-side files a connection needs.

    ``user`` is the account the tests run as (root on these machines), so the playbook under test
    acts on this machine exactly as it would on the registry VM.
    """

    workdir: pathlib.Path
    host: str = LOOPBACK
    port: int = 0
    user: str = "root"
    process: subprocess.Popen | None = None

    @property
    def host_key(self) -> pathlib.Path:
        return self.workdir / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> pathlib.Path:
        return self.workdir / "client_ed25519"

    @property
    def authorized_keys(self) -> pathlib.Path:
        return self.workdir / "authorized_keys"

    @property
    def known_hosts(self) -> pathlib.Path:
        return self.workdir / "known_hosts"

    @property
    def config_path(self) -> pathlib.Path:
        return self.workdir / "sshd_config"

    @property
    def log_path(self) -> pathlib.Path:
        return self.workdir / "sshd.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def ssh_common_args(self) -> str:
        """Client options for Ansible's ``ansible_ssh_common_args``: verify the host key we made."""
        return (
            f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes "
            "-o IdentitiesOnly=yes -o BatchMode=yes"
        )

    def inventory_vars(self) -> dict[str, str]:
        """Host variables that reach this server with Ansible's ssh connection."""
        return {
            "ansible_host": self.host,
            "ansible_port": str(self.port),
            "ansible_user": self.user,
            "ansible_connection": "ansible.builtin.ssh",
            "ansible_ssh_private_key_file": str(self.client_key),
            "ansible_ssh_common_args": self.ssh_common_args(),
        }

    def _write_config(self) -> None:
        # StrictModes would refuse an authorized_keys file below /tmp (world-writable parent);
        # the file itself is 0600 in a 0700 directory, which is what StrictModes protects.
        # UsePAM no: PAM's session stack is irrelevant to key login and not set up for a second sshd.
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {self.user}",
            "UsePAM no",
            "StrictModes no",
            "PrintMotd no",
            "X11Forwarding no",
            "MaxStartups 50:30:100",
            "LogLevel VERBOSE",
            f"Subsystem sftp {SFTP_SERVER}",
        ]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.config_path.chmod(0o600)

    def prepare(self) -> None:
        if not SSHD_BINARY.exists():
            raise SshServerError(f"{SSHD_BINARY} is not installed (Debian package openssh-server).")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        if not self.port:
            self.port = free_loopback_port()
        _keygen(self.host_key, "selfhosted-registry-test-host")
        _keygen(self.client_key, "selfhosted-registry-test-client")
        public_client_key = self.client_key.with_suffix(".pub").read_text(encoding="utf-8")
        self.authorized_keys.write_text(public_client_key, encoding="utf-8")
        self.authorized_keys.chmod(0o600)
        host_public = self.host_key.with_suffix(".pub").read_text(encoding="utf-8").split()
        # known_hosts names a non-standard port as "[host]:port".
        self.known_hosts.write_text(
            f"[{self.host}]:{self.port} {host_public[0]} {host_public[1]}\n", encoding="utf-8"
        )
        self._write_config()
        check = subprocess.run(
            [str(SSHD_BINARY), "-t", "-f", str(self.config_path)],
            check=False,  # the exit status is read below, to raise with sshd's own words
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if check.returncode != 0:
            raise SshServerError(f"sshd rejected its test configuration: {check.stderr.strip()}")

    def start(self, timeout: float = 20.0) -> None:
        """Start sshd and wait until it answers with an SSH banner."""
        self.prepare()
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [str(SSHD_BINARY), "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SshServerError(
                    f"sshd exited with {self.process.returncode} on {self.host}:{self.port}: {self.log()}"
                )
            if self._banner_received():
                return
            time.sleep(0.1)
        self.stop()
        raise SshServerError(f"sshd did not answer on {self.host}:{self.port} within {timeout:.0f} s: {self.log()}")

    def _banner_received(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                return sock.recv(64).startswith(b"SSH-2.0-")
        except OSError:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the daemon we started, by its PID; sessions it forked end with their connections."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, 9)
            self.process.wait(timeout=10)

    def __enter__(self) -> "SshServer":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_ssh(server: SshServer, command: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run one command through the server with the system ssh client (used to prove the fixture works)."""
    return subprocess.run(
        [
            "ssh",
            "-i",
            str(server.client_key),
            "-p",
            str(server.port),
            *server.ssh_common_args().split(),
            f"{server.user}@{server.host}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,  # the caller reads the exit status
    )
