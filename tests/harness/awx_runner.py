# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A job run the way AWX runs it: ansible-runner transmit | docker run -i <EE> ansible-runner worker | process.

The private data directory holds what AWX puts there for a job: the project checkout (project/), the
inventory, the extra variables (survey answers as strings, the credential types' extra_vars injectors),
the environment (the credential types' env injectors) and, for a machine credential, the SSH key, which
ansible-runner loads into an ssh-agent in the container. Nothing reaches a command line.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import subprocess
import typing as t

import ansible_runner
import yaml

from .awx_docker import DockerDaemon

TOP = pathlib.Path(__file__).resolve().parents[2]
EE_IMAGE = "localhost/selfhosted-registry-ee:latest"
JOB_TIMEOUT = 600  # a hang guard only; nothing asserts on time


def build_ee(daemon: DockerDaemon) -> str:
    """The EE image from ee/, built (or found current) on the AWX tests' engine."""
    result = subprocess.run([str(TOP / "scripts" / "ee"), "build"], env=daemon.env, capture_output=True, text=True,
                            timeout=1800, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/ee build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return EE_IMAGE


@dataclasses.dataclass
class Job:
    status: str  # successful or failed, as AWX shows the job
    events: list[dict[str, t.Any]]
    worker_stream: bytes

    @property
    def stdout(self) -> str:
        return "\n".join(event.get("stdout", "") for event in self.events)

    @property
    def artifacts(self) -> dict[str, t.Any]:
        """What set_stats handed on (AWX's job artifacts, the next workflow node's extra variables)."""
        for event in self.events:
            if event.get("event") == "playbook_on_stats":
                return dict(event["event_data"].get("artifact_data") or {})
        raise AssertionError("the job has no playbook_on_stats event")

    def task_results(self, task: str) -> list[dict[str, t.Any]]:
        return [event["event_data"]["res"] for event in self.events
                if event.get("event") in ("runner_on_ok", "runner_on_failed")
                and event["event_data"].get("task") == task]

    def explain(self) -> str:
        return f"status {self.status}\n{self.stdout[-6000:]}"


def run_job(
    daemon: DockerDaemon,
    image: str,
    workdir: pathlib.Path,
    playbook: str,
    inventory: dict[str, t.Any],
    extravars: dict[str, t.Any],
    envvars: dict[str, str] | None = None,
    ssh_key: str | None = None,
    files: dict[str, str] | None = None,
) -> Job:
    """One job: ``playbook`` is the path in the project (playbooks/diagnose.yml); ``files`` go into
    the private data directory (known_hosts for the SSH phases), seen as /runner/<name> in the EE."""
    private = workdir / "private"
    shutil.rmtree(private, ignore_errors=True)
    (private / "inventory").mkdir(parents=True)
    shutil.copytree(TOP / "playbooks", private / "project" / "playbooks")
    (private / "inventory" / "hosts.yml").write_text(yaml.safe_dump(inventory, sort_keys=False), encoding="utf-8")
    for name, text in (files or {}).items():
        (private / name).write_text(text, encoding="utf-8")
    transmitted = workdir / "transmit.stream"
    with transmitted.open("wb") as stream:
        ansible_runner.interface.run(
            streamer="transmit", _output=stream, private_data_dir=str(private), playbook=playbook,
            extravars=extravars, envvars=envvars or {}, ssh_key=ssh_key, quiet=True,
        )
    with transmitted.open("rb") as stream:
        worker = subprocess.run(
            ["docker", "run", "--rm", "-i", "--network", "host", image,
             "ansible-runner", "worker", "--private-data-dir=/runner"],
            stdin=stream, env=daemon.env, capture_output=True, timeout=JOB_TIMEOUT, check=False,
        )
    transmitted.unlink()  # it holds the injected secrets, as AWX's transmit stream does
    (workdir / "worker.stream").write_bytes(worker.stdout)  # kept for reading after a failed test
    # The worker exits with the playbook's status; the verdict is read from the events below.
    if not worker.stdout:
        raise AssertionError(f"ansible-runner worker exited {worker.returncode}:\n{worker.stderr.decode(errors='replace')[-3000:]}")
    events: list[dict[str, t.Any]] = []
    processed = ansible_runner.interface.run(
        streamer="process", _input=io_bytes(worker.stdout), private_data_dir=str(private), quiet=True,
        event_handler=lambda event: events.append(event) or True,
    )
    events.sort(key=lambda event: event.get("counter", 0))
    return Job(processed.status, events, worker.stdout)


def io_bytes(data: bytes) -> t.BinaryIO:
    import io  # pylint: disable=import-outside-toplevel

    return io.BytesIO(data)


def controller_inventory(registry_vm: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
    """localhost is the EE itself; registry_vm, when given, is reached over SSH."""
    inventory: dict[str, t.Any] = {"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}}
    if registry_vm is not None:
        inventory["all"]["children"] = {"registry_vm": {"hosts": {"registry-vm": registry_vm}}}
    return inventory


def dumps(value: t.Any) -> str:
    return json.dumps(value)
