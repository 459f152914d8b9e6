# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ansible-rulebook from PyPI (in .cache/eda-venv, made by scripts/bootstrap) running a rulebook, its
webhook source on a loopback port; started and stopped by PID like every other part."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import time
import typing as t
import urllib.request

import yaml

from .monitoring import Service, ServiceStartError
from .registry import free_port

TOP = pathlib.Path(__file__).resolve().parents[2]
EDA_BIN = TOP / ".cache" / "eda-venv" / "bin"
# Debian's openjdk-17-jre-headless, whatever the architecture: /usr/bin/java -> .../java-17-openjdk-<arch>/bin/java.
JAVA_HOME = str(pathlib.Path(shutil.which("java") or "/usr/lib/jvm/java-17-openjdk-amd64/bin/java").resolve().parents[1])
START_TIMEOUT = 120.0  # the JVM and the drools engine start slowly on a busy machine


class Rulebook(Service):
    """A running ansible-rulebook and where its webhook listens."""

    token: str = ""

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/endpoint"


def start_rulebook(workdir: pathlib.Path, rulebook: str, inventory: pathlib.Path | None, token: str,
                   env: t.Mapping[str, str], *, controller_url: str = "",
                   check_controller: bool = True) -> Rulebook:
    """ansible-rulebook -r ``rulebook`` -i ``inventory``, its webhook on a free port with bearer ``token``;
    ``env`` adds to its environment (credentials, ANSIBLE_* settings), as a service's unit file would.

    With ``controller_url`` (the token comes from ``env``: EDA_CONTROLLER_TOKEN) it may launch job templates
    there, one attempt per request; ``check_controller=False`` starts it without asking the controller for
    its version first (rulebook_unchecked_controller.py), the only way to reach its rules without one."""
    port = free_port()
    variables = workdir / "heal-vars.yml"
    variables.write_text(yaml.safe_dump({"heal_webhook_host": "127.0.0.1", "heal_webhook_port": port,
                                         "heal_webhook_token": token}))
    variables.chmod(0o600)
    environment = {**os.environ, **env, "JAVA_HOME": JAVA_HOME,
                   "PATH": f"{EDA_BIN}:{TOP / '.venv' / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    program = ([str(EDA_BIN / "ansible-rulebook")] if check_controller
               else [str(EDA_BIN / "python"), str(pathlib.Path(__file__).with_name("rulebook_unchecked_controller.py"))])
    arguments = ["-r", rulebook, "--vars", str(variables), "-v"]
    if inventory is not None:
        arguments += ["-i", str(inventory)]
    if controller_url:
        arguments += ["--controller-url", controller_url, "--controller-retry-attempts", "1"]
    log_path = workdir / "rulebook.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*program, *arguments],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=environment,
            start_new_session=True)
    service = Rulebook("ansible-rulebook", process, log_path, port)
    service.token = token
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceStartError(f"ansible-rulebook exited with {process.returncode}:\n{service.log_tail()}")
        with socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return service
        time.sleep(0.5)
    service.stop()
    raise ServiceStartError(f"ansible-rulebook's webhook did not listen within {START_TIMEOUT:.0f} s:\n{service.log_tail()}")


def alertmanager_notification(status: str, fingerprint: str, repository: str = "infra-ci",
                              tag: str = "latest") -> dict[str, t.Any]:
    """What Alertmanager posts (webhook version 4) for RegistryManifestIntegrityFailure on one image, grouped
    as docs/alertmanager/registry-heal.yml groups it (alert name, repository, tag)."""
    labels = {"alertname": "RegistryManifestIntegrityFailure", "repository": repository, "tag": tag,
              "severity": "critical"}
    return {"version": "4", "status": status, "receiver": "registry-heal", "groupKey": f"{{}}:{labels}",
            "groupLabels": {key: labels[key] for key in ("alertname", "repository", "tag")},
            "commonLabels": labels, "commonAnnotations": {}, "externalURL": "http://alertmanager.invalid",
            "alerts": [{"status": status, "labels": labels, "annotations": {}, "fingerprint": fingerprint,
                        "startsAt": "2026-12-07T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z"}]}


def post_notification(rulebook: Rulebook, payload: dict[str, t.Any]) -> None:
    """POST it to the rulebook's webhook as Alertmanager does, with the bearer token."""
    request = urllib.request.Request(rulebook.endpoint, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {rulebook.token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:  # raises on anything but 2xx
        answer.read()
