# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Docker engine of the AWX tests' own, apart from the one `make molecule` starts.

Its own socket, data root, exec root (so its own containerd) and pid file; no bridge and no iptables
rules, so it never touches the host's networking or another engine's. Images are built with
``--network host`` and containers run with ``--network host``: the EE reaches the test registry, the
test Woodpecker server and sshd on 127.0.0.1 as a receptor worker on the same host would.
Started by the test session and stopped by its PID; the data root is kept so the EE image is cached.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import subprocess
import time

SOCKET = "/run/docker-awx.sock"
HOST = f"unix://{SOCKET}"
DATA_ROOT = "/var/lib/docker-awx"
EXEC_ROOT = "/run/docker-awx"
PIDFILE = "/run/docker-awx.pid"
START_TIMEOUT = 60.0


class DockerStartError(RuntimeError):
    """The AWX tests' Docker engine did not come up."""


@dataclasses.dataclass
class DockerDaemon:
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path

    @property
    def env(self) -> dict[str, str]:
        """The environment for docker commands that talk to this engine only."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
        env.update(DOCKER_HOST=HOST, DOCKER_BUILDKIT="0")
        return env

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def answers(self) -> bool:
        return subprocess.run(["docker", "info"], env=self.env, capture_output=True, check=False).returncode == 0

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def start_docker(log_path: pathlib.Path) -> DockerDaemon:
    """dockerd on SOCKET with its own roots; raises with the log tail when it does not answer."""
    argv = [
        "dockerd", "--storage-driver", "overlay2", "-H", HOST, f"--data-root={DATA_ROOT}",
        f"--exec-root={EXEC_ROOT}", f"--pidfile={PIDFILE}", "--bridge=none", "--iptables=false",
        "--ip-forward=false", "--ip-masq=false",
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    daemon = DockerDaemon(process, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DockerStartError(f"dockerd for the AWX tests exited with {process.returncode}:\n{daemon.log_tail()}")
        if daemon.answers():
            return daemon
        time.sleep(0.5)
    daemon.stop()
    raise DockerStartError(f"dockerd for the AWX tests did not answer in {START_TIMEOUT:.0f} s:\n{daemon.log_tail()}")
