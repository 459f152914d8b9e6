# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host command line, run exactly as the registry_vm role installs it.

The stdlib files the role lists are copied into a package ``registry_tools`` with an empty ``__init__.py`` and run
with the system ``python3 -m registry_tools._registry_tools_cli``, outside the collection's import path.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils import _registry_tools_cli as cli
from tests.unit.plugins.module_utils.storage_tree import StorageTree, install_registry_tools


@pytest.fixture
def tree(tmp_path):
    return StorageTree(str(tmp_path / "storage"))


@pytest.fixture
def tools(tmp_path):
    parent = install_registry_tools(str(tmp_path / "host"))

    def run(*arguments):
        # A clean environment: nothing from the test's virtualenv or PYTHONPATH leaks in.
        environment = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        return subprocess.run(
            ["python3", "-m", "registry_tools._registry_tools_cli", *arguments],
            cwd=parent,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


def test_installed_files_import_only_the_standard_library_and_each_other(tmp_path):
    parent = install_registry_tools(str(tmp_path / "host"))
    package = os.path.join(parent, "registry_tools")
    for name in sorted(os.listdir(package)):
        with open(os.path.join(package, name)) as handle:
            module = ast.parse(handle.read(), feature_version=(3, 8))
        for node in ast.walk(module):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    continue  # relative: one of the four files
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            for root in roots:
                assert root in sys.stdlib_module_names, f"{name} imports {root}"


def test_clean_store_exits_0_with_a_summary_line(tree, tools):
    tree.multiarch("infra-ci", "latest")
    completed = tools("scan", "--storage-root", tree.root)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == [completed.stdout.strip()]
    assert completed.stdout.startswith("SUMMARY clean=yes repositories=1 revisions=3 tags=1 ")


def test_findings_exit_1_one_line_each_plus_report_and_metrics(tree, tools, tmp_path):
    index = tree.multiarch("infra-ci", "latest")
    tree.remove_revision("infra-ci", index.children[0].digest)
    report, metrics = tmp_path / "scan.json", tmp_path / "scan.prom"
    completed = tools("scan", "--storage-root", tree.v2, "--json-report", str(report), "--metrics-file", str(metrics))
    assert completed.returncode == 1
    lines = completed.stdout.splitlines()
    assert lines[0] == (
        f"ORPHAN INDEX repo=infra-ci digest={index.digest} media_type=application/vnd.oci.image.index.v1+json "
        f"missing={index.children[0].digest} tags=latest history_tags=-"
    )
    assert lines[1].startswith("SUMMARY clean=no ") and " orphan_index=1 " in lines[1]
    data = json.loads(report.read_text())
    assert data["clean"] is False and data["findings"][0]["missing"] == [index.children[0].digest]
    prom = metrics.read_text()
    assert 'registry_storage_findings{kind="orphan_index"} 1' in prom
    assert "registry_storage_clean 0" in prom
    assert "registry_storage_scan_failed 0" in prom


def test_could_not_scan_exits_2_with_one_error_line(tools, tmp_path):
    completed = tools("scan", "--storage-root", str(tmp_path / "missing"))
    assert completed.returncode == 2
    assert completed.stderr == f"ERROR storage root {tmp_path / 'missing'} does not exist\n"
    assert completed.stdout == ""


def test_could_not_scan_still_writes_a_failed_report_and_metrics(tools, tmp_path):
    report, metrics = tmp_path / "scan.json", tmp_path / "scan.prom"
    # A previous good run's files must not survive as the current state.
    report.write_text('{"clean": true}')
    metrics.write_text("registry_storage_clean 1\n")
    completed = tools("scan", "--storage-root", str(tmp_path / "missing"), "--json-report", str(report),
                      "--metrics-file", str(metrics))
    assert completed.returncode == 2
    data = json.loads(report.read_text())
    assert data["failed"] is True and data["clean"] is False
    assert data["error"] == f"storage root {tmp_path / 'missing'} does not exist"
    prom = metrics.read_text()
    assert "registry_storage_scan_failed 1" in prom and "registry_storage_clean 0" in prom


@pytest.mark.parametrize(
    "arguments, message",
    [
        ((), "the following arguments are required"),
        (("scan",), "--storage-root"),
        (("scan", "--storage-root", "/x", "--min-age", "-5"), "is negative"),
        (("scan", "--storage-root", "/x", "--min-age", "soon"), "not a number"),
        (("gc", "--storage-root", "/x", "--config", "c", "--gc-command", "'unbalanced"), "cannot split command"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_line(tools, arguments, message):
    completed = tools(*arguments)
    assert completed.returncode == 2
    assert completed.stderr.startswith("ERROR ") and message in completed.stderr
    assert "Traceback" not in completed.stderr


def test_repository_patterns_and_min_age(tree, tools):
    image = tree.image("team/one", "v1", seed="1")
    tree.remove_blob(image.layers[0])
    tree.image("other", "v1", seed="2")
    assert tools("scan", "--storage-root", tree.root, "--repository", "other").returncode == 0
    assert tools("scan", "--storage-root", tree.root, "--repository", "team/*").returncode == 1
    recent = tools("scan", "--storage-root", tree.root, "--min-age", "86400")
    # The layer link and the revision are minutes old: held back as possibly in progress.
    assert recent.returncode == 0 and " skipped_recent=2 " in recent.stdout


def test_unwritable_report_is_exit_2(tree, tools, tmp_path):
    tree.image("app", "v1")
    completed = tools("scan", "--storage-root", tree.root, "--json-report", str(tmp_path / "no" / "dir" / "r.json"))
    assert completed.returncode == 2 and completed.stderr.startswith("ERROR cannot write ")


def test_gc_dry_run_through_the_installed_package(tree, tools, tmp_path):
    tree.multiarch("infra-ci", "latest")
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tree.root}\n")
    refused = tools("gc", "--storage-root", tree.root, "--config", str(config), "--delete-untagged", "--dry-run",
                    "--gc-command", "/usr/bin/docker-registry")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stdout.splitlines()[-1].startswith("GC REFUSED ")
    fine = tools("gc", "--storage-root", tree.root, "--config", str(config), "--dry-run",
                 "--gc-command", "/usr/bin/docker-registry")
    assert fine.returncode == 0
    assert fine.stdout.startswith("GC NOTHING_TO_COLLECT ")


def test_main_in_process_matches_the_exit_codes(tree, capsys):
    tree.image("app", "v1")
    assert cli.main(["scan", "--storage-root", tree.root]) == 0
    assert capsys.readouterr().out.startswith("SUMMARY clean=yes")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["scan"])
    assert exit_info.value.code == 2


def test_gc_says_it_runs_before_it_stops_the_registry_and_that_it_ended_after(tree, tools, tmp_path):
    """The probe's rules hold "registry unreadable" during planned maintenance from these metrics."""
    tree.image("app", "v1")
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tree.root}\n")
    metrics, during = tmp_path / "gc.prom", tmp_path / "during-stop.prom"
    done = tools("gc", "--storage-root", tree.root, "--config", str(config), "--gc-command", "/usr/bin/docker-registry",
                 "--gc-timeout", "600", "--timeout", "60", "--metrics-file", str(metrics),
                 "--lock-file", str(tmp_path / "lock"),
                 "--before-command", f"cp {metrics} {during}", "--after-command", "true")
    assert done.returncode == 0, done.stdout + done.stderr
    stopping = during.read_text()  # what the metrics said while the before command stopped the registry
    assert "registry_gc_running 1" in stopping and "registry_gc_time_limit_seconds 1380" in stopping
    assert "registry_gc_started_timestamp_seconds " in stopping
    after = metrics.read_text()
    assert "registry_gc_running 0" in after and "registry_gc_last_run_timestamp_seconds " in after
    assert "registry_gc_failed 0" in after
