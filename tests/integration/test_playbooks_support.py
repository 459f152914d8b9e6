# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running the runbook playbooks for real: ``ansible-playbook`` in a subprocess, an inventory whose
"registry VM" is this machine (local connection, or a real sshd on loopback), and helpers to read
what the playbook printed. Holds no tests itself; the test_playbooks_* modules import it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import typing as t

import yaml

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO_ROOT / "playbooks"
COLLECTIONS = REPO_ROOT / ".cache" / "collections"
VENV_BIN = REPO_ROOT / ".venv" / "bin"
# The controller side needs requests (the verifier); the "VM" side gets the system Python, which is all a
# registry host is guaranteed to have (the storage scanner is standard library only).
CONTROLLER_PYTHON = str(VENV_BIN / "python")
HOST_PYTHON = "/usr/bin/python3"
PLAYBOOK_TIMEOUT = 900  # a hang guard only; nothing asserts on time

_RECAP_LINE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)", re.M)


@dataclasses.dataclass
class PlaybookRun:
    command: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def recap(self, host: str) -> dict[str, int]:
        for match in _RECAP_LINE.finditer(self.stdout):
            if match.group(1) == host:
                keys = ("ok", "changed", "unreachable", "failed", "skipped")
                return dict(zip(keys, (int(value) for value in match.groups()[1:])))
        raise AssertionError(f"no PLAY RECAP line for {host}:\n{self.stdout[-3000:]}")

    def explain(self) -> str:
        return f"$ {' '.join(self.command)}\nexit {self.returncode}\n--- stdout\n{self.stdout[-8000:]}\n--- stderr\n{self.stderr[-4000:]}"


def ansible_env(workdir: pathlib.Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        # The tests decide which credentials the playbook sees.
        if key not in ("REGISTRY_USERNAME", "REGISTRY_PASSWORD", "WOODPECKER_TOKEN") and not key.startswith("ANSIBLE_")
    }
    env.update(
        PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_RETRY_FILES_ENABLED="false",
        ANSIBLE_LOCAL_TEMP=str(workdir / "ansible-local"),
        ANSIBLE_HOME=str(workdir / "ansible-home"),
        # No ControlPersist master left running after the playbook: every process ends with the run.
        ANSIBLE_SSH_ARGS="-o ControlMaster=no",
    )
    env.update(extra or {})
    return env


def write_inventory(
    path: pathlib.Path,
    *,
    registry_vm: dict[str, t.Any] | None = None,
    group: str = "registry_vm",
    host_name: str = "registry-vm",
) -> pathlib.Path:
    """localhost is the controller; ``registry_vm`` (or ``group``) holds one host: local by default."""
    vm_vars = registry_vm if registry_vm is not None else {"ansible_connection": "local"}
    vm_vars = {"ansible_python_interpreter": HOST_PYTHON, **vm_vars}
    inventory = {
        "all": {
            "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": CONTROLLER_PYTHON}},
            "children": {group: {"hosts": {host_name: vm_vars}}},
        }
    }
    path.write_text(yaml.safe_dump(inventory, sort_keys=False), encoding="utf-8")
    return path


def run_playbook(
    playbook: str,
    inventory: pathlib.Path,
    extra_vars: dict[str, t.Any],
    workdir: pathlib.Path,
    *,
    check: bool = False,
    env: dict[str, str] | None = None,
    extra_args: t.Sequence[str] = (),
) -> PlaybookRun:
    """Run playbooks/<playbook> (or a playbook FQCN such as ``selfhosted.registry.verify``, from the
    installed collection) with ``extra_vars`` passed as a JSON file (no shell quoting involved)."""
    workdir.mkdir(parents=True, exist_ok=True)
    vars_file = workdir / f"extra-vars-{len(list(workdir.glob('extra-vars-*')))}.json"
    vars_file.write_text(json.dumps(extra_vars), encoding="utf-8")
    target = str(PLAYBOOKS / playbook) if playbook.endswith(".yml") else playbook
    command = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), target, "-e", f"@{vars_file}"]
    if check:
        command.append("--check")
    command.extend(extra_args)
    result = subprocess.run(
        command,
        env=ansible_env(workdir, env),
        cwd=str(workdir),
        capture_output=True,
        text=True,
        timeout=PLAYBOOK_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,  # the tests assert on the exit status
    )
    return PlaybookRun(command, result.returncode, result.stdout, result.stderr)


def run_local_playbook(
    playbook: str, tmp_path: pathlib.Path, extra_vars: dict[str, t.Any], workdir: str = "run", **options: t.Any
) -> PlaybookRun:
    """run_playbook with the default inventory (the registry VM is this machine, local connection), written
    to ``tmp_path/inventory.yml``, in the work directory ``tmp_path/workdir``."""
    inventory = write_inventory(tmp_path / "inventory.yml")
    return run_playbook(playbook, inventory, extra_vars, tmp_path / workdir, **options)


def run_registry_host_tasks(
    tmp_path: pathlib.Path, tasks: list[dict[str, t.Any]], extra_vars: dict[str, t.Any], *,
    play: str = "Registry host", extra_args: t.Sequence[str] = (),
) -> PlaybookRun:
    """One play of ``tasks`` on the registry_vm host (this machine with its system Python, as a registry host
    has), written to ``tmp_path/playbook.yml`` and run there with the default inventory."""
    playbook = tmp_path / "playbook.yml"
    playbook.write_text(
        yaml.safe_dump([{"name": play, "hosts": "registry_vm", "gather_facts": False, "tasks": tasks}], sort_keys=False),
        encoding="utf-8",
    )
    return run_playbook(str(playbook), write_inventory(tmp_path / "inventory.yml"), extra_vars, tmp_path,
                        extra_args=extra_args)


def storage_snapshot(root: pathlib.Path) -> dict[str, tuple[str, int]]:
    """Every path under a storage root with its kind and size: proof that nothing was deleted or moved."""
    snapshot: dict[str, tuple[str, int]] = {}
    for path in sorted(root.rglob("*")):
        kind = "dir" if path.is_dir() else "file"
        snapshot[str(path.relative_to(root))] = (kind, 0 if kind == "dir" else path.stat().st_size)
    return snapshot
