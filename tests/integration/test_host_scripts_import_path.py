# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scripts the roles install run as root; started by hand from a directory any user can write, they
must not import what was left there (`python3 -m` puts the working directory first on sys.path).

The real templates are rendered by ansible-playbook and run with Debian's /usr/bin/python3 from a
directory holding a `registry_tools` and a `registry_probe` package and a `json.py`, each of which would
leave a marker if imported.
"""

from __future__ import annotations

import pathlib
import subprocess

import yaml

from tests.harness.probe import install_probe
from tests.harness.registry import RegistryServer
from tests.integration.test_playbooks_support import run_playbook, write_inventory
from tests.unit.plugins.module_utils.storage_tree import install_registry_tools

TOP = pathlib.Path(__file__).resolve().parents[2]


def hostile_directory(path: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    path.mkdir(parents=True)
    planted = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    for package in ("registry_tools", "registry_probe"):
        (path / package).mkdir()
        (path / package / "__init__.py").write_text(planted)
    (path / "json.py").write_text(planted)
    return path


def test_the_scan_and_probe_scripts_never_import_from_the_directory_they_are_started_in(
    tmp_path: pathlib.Path, registry: RegistryServer
) -> None:
    tools = install_registry_tools(str(tmp_path / "lib"))
    probe_tools = install_probe(tmp_path / "probe-lib")
    (tmp_path / "reports").mkdir()
    (tmp_path / "textfile").mkdir()
    role_vars = {
        "registry_vm_private_storage": str(registry.storage_root), "registry_vm_tools_dir": tools,
        "registry_vm_python": "/usr/bin/python3", "registry_vm_scan_min_age": 0,
        "registry_vm_report_dir": str(tmp_path / "reports"), "registry_vm_textfile_collector_dir": str(tmp_path / "textfile"),
        "registry_probe_registry_url": registry.url, "registry_probe_tools_dir": str(probe_tools),
        "registry_probe_python": "/usr/bin/python3", "registry_probe_username": "", "registry_probe_ca_path": "",
        "registry_probe_repositories": [], "registry_probe_pushgateway_url": "", "registry_probe_manifest_cache_dir": "",
        "registry_probe_lock_file": str(tmp_path / "probe.lock"), "registry_probe_interval_minutes": 15,
        "registry_probe_report_path": str(tmp_path / "reports" / "probe.json"),
        "registry_probe_metrics_path": str(tmp_path / "textfile" / "probe.prom"),
    }
    templates = {"registry-scan": TOP / "roles/registry_vm/templates/registry-scan.sh.j2",
                 "registry-probe": TOP / "roles/registry_probe/templates/registry-probe.sh.j2"}
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Render", "hosts": "localhost", "gather_facts": False,
        "vars_files": [str(TOP / "roles/registry_probe/defaults/main.yml")],
        "tasks": [{"name": f"Render {name}", "ansible.builtin.template": {
            "src": str(source), "dest": str(tmp_path / name), "mode": "0755"}} for name, source in templates.items()],
    }]))
    rendered = run_playbook(str(playbook), write_inventory(tmp_path / "inventory.yml"), role_vars, tmp_path / "ansible")
    assert rendered.returncode == 0, rendered.explain()

    marker = tmp_path / "imported"
    hostile = hostile_directory(tmp_path / "world-writable", marker)
    for name in templates:
        run = subprocess.run([str(tmp_path / name)], cwd=hostile, capture_output=True, text=True, timeout=300,
                             check=False, env={"PATH": "/usr/bin:/bin"})
        assert run.returncode == 0, f"{name}: {run.stdout}{run.stderr}"
        assert not marker.exists(), f"{name} imported from its working directory: {marker.read_text()}"
