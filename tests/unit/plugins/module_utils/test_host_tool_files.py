# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every file the roles install on the registry host compiles and imports under the oldest and the newest
Python a host may have: the real Python 3.9 of Debian 11 and 3.13 of Debian 13, in the root file systems
scripts/host-roots makes (tests/harness/host_python.py), with warnings as errors.

The real interpreters, not ``ast.parse(feature_version=...)``: they also refuse what their library lacks at
import time (a keyword a decorator does not take, a name a module does not have, annotations evaluated at
run time) and, on 3.13, an invalid escape sequence or a module on its way out. What only a run reaches is for
tests/integration/test_host_tools_pythons.py.
"""

from __future__ import annotations

import json
import pathlib

import pytest
import yaml

from tests.harness.host_python import HOST_PYTHONS, OLDEST, HostPython

TOP = pathlib.Path(__file__).resolve().parents[4]
MODULE_UTILS = TOP / "plugins" / "module_utils"

# Runs inside the root: writes the packages to a temporary directory of the root, compiles and imports each
# file there, removes the directory, prints {file: problem or null} as JSON.
CHECK = r"""
import importlib, json, os, shutil, sys, tempfile, traceback
packages = json.load(sys.stdin)
problems = {}
top = tempfile.mkdtemp()
try:
    for package, files in packages.items():
        os.mkdir(os.path.join(top, package))
        open(os.path.join(top, package, "__init__.py"), "w").close()
        for name, source in files.items():
            with open(os.path.join(top, package, name), "w", encoding="utf-8") as handle:
                handle.write(source)
    sys.path.insert(0, top)
    for package, files in packages.items():
        for name, source in files.items():
            key = package + "/" + name
            try:
                compile(source, key, "exec", dont_inherit=True)
                importlib.import_module(package + "." + name[:-3])
                problems[key] = None
            except BaseException:
                problems[key] = traceback.format_exc(limit=3).strip().splitlines()[-1]
finally:
    shutil.rmtree(top)
print(json.dumps(problems))
"""


def host_packages() -> dict[str, list[str]]:
    """The installed packages and their files, read from the roles (a file added there is checked here)."""
    vm = yaml.safe_load((TOP / "roles" / "registry_vm" / "defaults" / "main.yml").read_text(encoding="utf-8"))
    probe = yaml.safe_load((TOP / "roles" / "registry_probe" / "vars" / "main.yml").read_text(encoding="utf-8"))
    return {"registry_tools": list(vm["registry_vm_tools_files"]), "registry_probe": list(probe["registry_probe_tools_files"])}


def check_in(python: HostPython, packages: dict[str, dict[str, str]]) -> dict[str, str | None]:
    completed = python.run("-W", "error", "-c", CHECK, input_text=json.dumps(packages), timeout=120)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def sources() -> dict[str, dict[str, str]]:
    return {package: {name: (MODULE_UTILS / name).read_text(encoding="utf-8") for name in names}
            for package, names in host_packages().items()}


def test_the_host_packages_are_the_stdlib_files_the_cli_entry_points_need() -> None:
    packages = host_packages()
    assert "_registry_tools_cli.py" in packages["registry_tools"] and "_tag_retention.py" in packages["registry_tools"]
    assert "_integrity_probe.py" in packages["registry_probe"]


@pytest.mark.parametrize("python", [p for p in HOST_PYTHONS if p.root is not None], ids=lambda p: p.id)
def test_every_host_tool_file_compiles_and_imports_with_warnings_as_errors(python: HostPython) -> None:
    assert python.version_seen() == python.version
    packages = sources()
    problems = check_in(python, packages)
    assert set(problems) == {f"{package}/{name}" for package, files in packages.items() for name in files}
    assert {key: problem for key, problem in problems.items() if problem} == {}


def test_the_check_refuses_what_is_newer_than_the_oldest_python() -> None:
    """The guard can fail: syntax and library features of 3.10 and 3.11 are each refused by 3.9."""
    newer = {
        "_match.py": "def f(x):\n    match x:\n        case 1:\n            return 1\n",
        "_union.py": "import typing\nAlias = int | None\n",
        "_dataclass.py": "import dataclasses\n@dataclasses.dataclass(slots=True)\nclass C:\n    x: int = 0\n",
        "_utc.py": "from datetime import UTC\n",
    }
    problems = check_in(OLDEST, {"registry_tools": newer})
    assert all(problems[f"registry_tools/{name}"] for name in newer), problems
    assert problems["registry_tools/_match.py"].startswith("SyntaxError")
