# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The registry_vm role's GC and retention scripts keep hostile role values as data.

The real templates are rendered by ansible-playbook with paths holding a blank, quotes, $(...),
backquotes, ';' and '%'; the rendered GC script is then run with the guard's command line replaced by
a printer, so the test sees exactly the argument lists the guard would split from each command string.
(The molecule scenario runs the scan's cron line under such paths on the real VM.)
"""

from __future__ import annotations

import json
import pathlib
import subprocess

import yaml

from tests.integration.test_playbooks_support import run_playbook, write_inventory

TEMPLATES = pathlib.Path(__file__).resolve().parents[2] / "roles" / "registry_vm" / "templates"


def test_gc_and_retention_scripts_keep_hostile_paths_as_data(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "executed"
    hostile = str(tmp_path / f"we ird'$(touch {marker})`touch {marker}`;%x")
    role_vars = {
        "registry_vm_bin_dir": f"{hostile}/bin", "registry_vm_compose_project_name": "selfhosted-registry",
        "registry_vm_compose_dir": f"{hostile}/compose", "registry_vm_report_dir": f"{hostile}/reports",
        "registry_vm_private_name": "private", "registry_vm_private_storage": f"{hostile}/data/private",
        "registry_vm_gc_delete_untagged": False, "registry_vm_tools_dir": f"{hostile}/lib",
        "registry_vm_python": "/usr/bin/python3", "registry_vm_config_dir": f"{hostile}/config",
        "registry_vm_gc_timeout": 100, "registry_vm_textfile_collector_dir": f"{hostile}/textfile",
        "registry_vm_tag_retention_keep": 10, "registry_vm_tag_retention_min_age_days": 7,
        "registry_vm_tag_retention_apply": False,
    }
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump([{"name": "Render", "hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": f"Render {name}", "ansible.builtin.template": {
            "src": str(TEMPLATES / f"{name}.sh.j2"), "dest": str(tmp_path / f"{name}.sh"), "mode": "0755"}}
        for name in ("registry-gc", "registry-tag-retention")]}]))
    run = run_playbook(str(playbook), write_inventory(tmp_path / "inventory.yml"), role_vars, tmp_path / "ansible")
    assert run.returncode == 0, run.explain()

    gc_script = (tmp_path / "registry-gc.sh").read_text()
    for name in ("registry-gc", "registry-tag-retention"):
        assert subprocess.run(["sh", "-n", str(tmp_path / f"{name}.sh")], check=False).returncode == 0

    # Run the GC script with the guard replaced by a printer of the command strings it would split.
    printer = ("python3 -c 'import json, shlex, sys; a = sys.argv[1:];"
               " print(json.dumps({a[i]: shlex.split(a[i + 1]) for i in range(len(a) - 1) if a[i].endswith(\"-command\")}))'")
    lines = gc_script.splitlines()
    start = next(i for i, line in enumerate(lines) if "-m registry_tools._registry_tools_cli gc" in line)
    lines[start] = printer + " \\"
    lines = [line for line in lines if not line.endswith("/bin/registry-scan'")]
    probe = tmp_path / "gc-printer.sh"
    probe.write_text("\n".join(lines) + "\n")
    printed = subprocess.run(["sh", str(probe)], capture_output=True, text=True, check=False)
    commands = json.loads(printed.stdout.splitlines()[-1])
    assert commands == {
        "--gc-command": ["docker", "compose", "--project-name", "selfhosted-registry", "--file",
                         f"{hostile}/compose/compose.yml", "run", "--rm", "--no-deps", "-T", "--name",
                         "selfhosted-registry-gc", "private"],
        "--gc-stop-command": ["docker", "rm", "--force", "selfhosted-registry-gc"],
        "--before-command": [f"{hostile}/bin/registry-gc", "--stop-registry"],
        "--after-command": [f"{hostile}/bin/registry-gc", "--start-registry"],
    }
    assert printed.stdout.splitlines()[0].endswith(f"registry-gc: {hostile}/data/private")
    assert not marker.exists()
