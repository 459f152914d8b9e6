# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One host-wide lock for the storage scan, the GC guard and tag retention, as the role installs them.

The test holds the lock (as a running collection would) and runs each installed command line against
storage the real registry wrote: each refuses in one sentence, changes nothing and still writes its report.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess

from tests.unit.plugins.module_utils.storage_tree import install_registry_tools
from tests.unit.plugins.module_utils.storage_tree import tree_listing as listing  # the storage, to prove it unchanged

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def test_each_tool_refuses_while_another_holds_the_lock(registry, pusher, tmp_path):
    pusher.push_image("app", "old", seed="old")
    pusher.push_blob("app", b"unreferenced")
    registry.stop()
    parent = install_registry_tools(str(tmp_path / "installed"))
    lock = tmp_path / "tools.lock"
    lock_args = ["--lock-file", str(lock), "--lock-wait", "0"]
    root = str(registry.storage_root)

    def run(*arguments):
        return subprocess.run(["python3", "-m", *arguments], cwd=parent, capture_output=True, text=True,
                              timeout=300, check=False)

    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write("pid 1 guarded garbage collection\n")
        handle.flush()
        before = listing(root)
        held = "another registry maintenance run (pid 1 guarded garbage collection) holds lock file"

        scan = run("registry_tools._registry_tools_cli", "scan", "--storage-root", root, *lock_args,
                   "--json-report", str(tmp_path / "scan.json"), "--metrics-file", str(tmp_path / "scan.prom"))
        assert scan.returncode == 2 and scan.stdout == ""
        assert scan.stderr == f"ERROR {held} {lock}; waited 0 seconds, so this storage scan did not start\n"
        assert json.loads((tmp_path / "scan.json").read_text())["failed"] is True
        assert "registry_storage_scan_failed 1" in (tmp_path / "scan.prom").read_text()

        gc = run("registry_tools._registry_tools_cli", "gc", "--storage-root", root, "--config",
                 str(registry.config_path), "--gc-command", REGISTRY_BINARY, "--registry-offline", *lock_args,
                 "--json-report", str(tmp_path / "gc.json"))
        assert gc.returncode == 2
        assert gc.stderr == f"ERROR {held} {lock}; waited 0 seconds, so this guarded garbage collection did not start\n"
        report = json.loads((tmp_path / "gc.json").read_text())
        assert report["failure_kind"] == "locked" and report["commands"] == []

        retention = run("registry_tools._tag_retention", "--storage-root", root, "--keep", "0", "--min-age-days",
                        "0", "--no-protect", "--registry-url", registry.url, "--apply", *lock_args)
        assert retention.returncode == 2 and "DELETE" not in retention.stdout
        assert retention.stderr == f"error: {held} {lock}; waited 0 seconds, so this tag retention did not start.\n"
        assert listing(root) == before

    # Released: the same runs go through (the scan is clean, the GC collects the stray blob).
    assert run("registry_tools._registry_tools_cli", "scan", "--storage-root", root, *lock_args).returncode == 0
    collected = run("registry_tools._registry_tools_cli", "gc", "--storage-root", root, "--config",
                    str(registry.config_path), "--gc-command", REGISTRY_BINARY, "--registry-offline", *lock_args)
    assert collected.returncode == 0, collected.stdout + collected.stderr
