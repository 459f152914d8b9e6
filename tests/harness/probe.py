# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The integrity probe installed the way the registry_probe role installs it, and run as cron runs it.

The file list comes from the role itself, so a file the role forgets to install fails these tests.
The probe runs under Debian's /usr/bin/python3 with python3-requests: what the registry host has.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import subprocess
import typing as t

import yaml

TOP = pathlib.Path(__file__).resolve().parents[2]
ROLE = TOP / "roles" / "registry_probe"
HOST_PYTHON = "/usr/bin/python3"


def probe_files() -> list[str]:
    return list(yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["registry_probe_tools_files"])


def install_probe(tools_dir: pathlib.Path) -> pathlib.Path:
    """Copy the probe package as the role does; returns the PYTHONPATH entry."""
    package = tools_dir / "registry_probe"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    for name in probe_files():
        shutil.copyfile(TOP / "plugins" / "module_utils" / name, package / name)
    return tools_dir


@dataclasses.dataclass
class ProbeRun:
    returncode: int
    stdout: str
    stderr: str
    report: dict[str, t.Any] | None
    metrics: str | None


@dataclasses.dataclass
class Probe:
    """One installed probe with its own report, metrics and lock files under ``workdir``."""

    workdir: pathlib.Path
    registry_url: str

    def __post_init__(self) -> None:
        self.tools_dir = install_probe(self.workdir / "lib")
        self.report_path = self.workdir / "probe.json"
        self.metrics_path = self.workdir / "textfile" / "selfhosted_registry_probe.prom"
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_path = self.workdir / "probe.lock"
        self.credentials_path = self.workdir / "credentials.json"

    def set_credentials(self, username: str, password: str) -> None:
        self.credentials_path.write_text(json.dumps({"username": username, "password": password}))
        self.credentials_path.chmod(0o600)

    def argv(self, *extra: str) -> list[str]:
        argv = [HOST_PYTHON, "-m", "registry_probe._integrity_probe", "--registry-url", self.registry_url,
                "--json-report", str(self.report_path), "--metrics-file", str(self.metrics_path),
                "--lock-file", str(self.lock_path), "--interval", "900", "--timeout", "5"]
        if self.credentials_path.exists():
            argv += ["--credentials-file", str(self.credentials_path)]
        return argv + list(extra)

    def write_command(self, path: pathlib.Path) -> pathlib.Path:
        """The command the role installs (its bin/registry-probe), running this probe; returns ``path``."""
        path.write_text(f"#!/bin/sh\nPYTHONPATH={self.tools_dir} exec {' '.join(self.argv())}\n")
        path.chmod(0o755)
        return path

    def run(self, *extra: str) -> ProbeRun:
        result = subprocess.run(self.argv(*extra), capture_output=True, text=True, timeout=300,
                                env={"PYTHONPATH": str(self.tools_dir), "PATH": "/usr/bin:/bin"}, check=False)
        report = json.loads(self.report_path.read_text()) if self.report_path.exists() else None
        metrics = self.metrics_path.read_text() if self.metrics_path.exists() else None
        return ProbeRun(result.returncode, result.stdout, result.stderr, report, metrics)
