# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real monitoring parts on loopback for the detection drill: Debian's cron, node_exporter and Prometheus.

Each is started by the test, bound to 127.0.0.1 (cron listens nowhere), and stopped by its PID.
A part that cannot start raises with its log tail, so the test fails; nothing is skipped.

cron reads fixed paths (/etc/cron.d, /etc/crontab, the spool), so it runs in a private mount namespace
where those paths are the test's own directories: the host's cron jobs never run, and the test's jobs
never reach the host.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import subprocess
import time
import typing as t

import requests
import yaml

from .registry import free_port

START_TIMEOUT = 30.0


class ServiceStartError(RuntimeError):
    """A monitoring part did not come up."""


@dataclasses.dataclass
class Service:
    """One process started by a test, stopped by its PID."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path
    port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def _spawn(name: str, argv: list[str], log_path: pathlib.Path, port: int | None = None) -> Service:
    with log_path.open("ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return Service(name, process, log_path, port)


def _wait_http(service: Service, path: str) -> Service:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise ServiceStartError(f"{service.name} exited with {service.process.returncode}:\n{service.log_tail()}")
        try:
            if requests.get(service.url + path, timeout=2).status_code == 200:
                return service
        except requests.RequestException:
            pass
        time.sleep(0.2)
    service.stop()
    raise ServiceStartError(f"{service.name} did not answer {path} in {START_TIMEOUT:.0f} s:\n{service.log_tail()}")


def start_node_exporter(workdir: pathlib.Path, textfile_dir: pathlib.Path) -> Service:
    """Debian's prometheus-node-exporter with only the textfile collector, reading ``textfile_dir``."""
    port = free_port()
    service = _spawn("node_exporter", [
        "prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{port}",
        "--collector.disable-defaults", "--collector.textfile",
        f"--collector.textfile.directory={textfile_dir}",
    ], workdir / "node-exporter.log", port)
    return _wait_http(service, "/metrics")


class Prometheus(Service):
    def alerts(self, name: str | None = None, state: str | None = None) -> list[dict[str, t.Any]]:
        """Alerts as Prometheus itself reports them (pending and firing)."""
        payload = requests.get(self.url + "/api/v1/alerts", timeout=10).json()
        return [alert for alert in payload["data"]["alerts"]
                if (name is None or alert["labels"]["alertname"] == name)
                and (state is None or alert["state"] == state)]

    def query(self, expression: str) -> list[dict[str, t.Any]]:
        payload = requests.get(self.url + "/api/v1/query", params={"query": expression}, timeout=10).json()
        return list(payload["data"]["result"])


def start_prometheus(workdir: pathlib.Path, target: str, rule_files: list[pathlib.Path],
                     interval: str = "2s", job_name: str = "node", honor_labels: bool = False,
                     alertmanager: str | None = None) -> Prometheus:
    """Debian's prometheus scraping ``target`` (host:port) every ``interval`` with ``rule_files`` loaded.
    ``honor_labels`` keeps the scraped series' own labels (what a Pushgateway's scrape needs);
    ``alertmanager`` (host:port) is where it sends its alerts."""
    scrape: dict[str, t.Any] = {"job_name": job_name, "static_configs": [{"targets": [target]}]}
    if honor_labels:
        scrape["honor_labels"] = True
    config: dict[str, t.Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [scrape],
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    check = subprocess.run(["promtool", "check", "config", str(config_path)], capture_output=True, text=True,
                           check=False)
    if check.returncode != 0:
        raise ServiceStartError(f"promtool rejects the drill's Prometheus config:\n{check.stdout}{check.stderr}")
    port = free_port()
    service = _spawn("prometheus", [
        "prometheus", f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ], workdir / "prometheus.log", port)
    prometheus = Prometheus(service.name, service.process, service.log_path, service.port)
    return t.cast(Prometheus, _wait_http(prometheus, "/-/ready"))


def start_cron(workdir: pathlib.Path, cron_dir: pathlib.Path) -> Service:
    """Debian's cron in the foreground, in a mount namespace where /etc/cron.d is ``cron_dir``.

    /etc/crontab and the user spool are empty there, and /run is private (cron's pid file), so this
    cron runs exactly the jobs in ``cron_dir`` and nothing of the host's.
    """
    crontab = workdir / "crontab"
    crontab.write_text("")
    crontab.chmod(0o644)
    spool = workdir / "spool"
    spool.mkdir(exist_ok=True)
    script = (
        f"mount --bind {cron_dir} /etc/cron.d && mount --bind {crontab} /etc/crontab"
        f" && mount --bind {spool} /var/spool/cron/crontabs && mount -t tmpfs tmpfs /run && exec cron -f -L 15"
    )
    # unshare and sh exec into cron: the PID we hold is cron's own.
    service = _spawn("cron", ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
                     workdir / "cron.log")
    time.sleep(0.5)
    if service.process.poll() is not None:
        raise ServiceStartError(f"cron exited with {service.process.returncode}:\n{service.log_tail()}")
    return service


class Alertmanager(Service):
    def alerts(self) -> list[dict[str, t.Any]]:
        """The alerts Alertmanager holds, as its own API reports them."""
        return list(requests.get(self.url + "/api/v2/alerts", timeout=10).json())


def start_alertmanager(workdir: pathlib.Path, config: dict[str, t.Any]) -> Alertmanager:
    """Debian's prometheus-alertmanager with ``config``, alone (no cluster), on a free loopback port."""
    config_path = workdir / "alertmanager.yml"
    config_path.write_text(yaml.safe_dump(config))
    check = subprocess.run(["amtool", "check-config", str(config_path)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise ServiceStartError(f"amtool rejects the Alertmanager config:\n{check.stdout}{check.stderr}")
    port = free_port()
    service = _spawn("alertmanager", [
        "prometheus-alertmanager", f"--config.file={config_path}", f"--storage.path={workdir / 'alertmanager'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
    ], workdir / "alertmanager.log", port)
    alertmanager = Alertmanager(service.name, service.process, service.log_path, service.port)
    return t.cast(Alertmanager, _wait_http(alertmanager, "/-/ready"))
