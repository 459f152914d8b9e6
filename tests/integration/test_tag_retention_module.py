# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""registry_tag_retention through ansible-playbook, on a "registry host" that has only the system Python.

Check mode with diff first, then a real run, against a real registry with htpasswd auth; the run is
verbose (-vvv) and neither its output nor the registered results may contain the password.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
import typing as t

from tests.harness.images import ImagePusher
from tests.harness.registry import RegistryServer
from tests.integration.test_playbooks_support import run_registry_host_tasks

DAY = 86400.0


def set_age(registry: RegistryServer, repository: str, tag: str, days: float) -> None:
    link = registry.tree / "repositories" / repository / "_manifests" / "tags" / tag / "current" / "link"
    stamp = time.time() - days * DAY
    os.utime(link, (stamp, stamp))


def _retention_task(name: str, register: str, **extra: t.Any) -> t.Dict[str, t.Any]:
    return {
        "name": name,
        "selfhosted.registry.registry_tag_retention": {
            "storage_root": "{{ storage_root }}",
            "registry_url": "{{ registry_url }}",
            "username": "{{ registry_user }}",
            "password": "{{ registry_password }}",
            "keep_newest": 1,
            "min_age_days": 7,
            "protected_tags": ["latest"],
            "dry_run": False,
        },
        "register": register,
        **extra,
    }


def test_module_on_the_registry_host_check_mode_diff_then_apply_without_leaking_the_password(
    registry_basic: RegistryServer, make_pusher: t.Callable[..., ImagePusher], tmp_path: pathlib.Path
) -> None:
    pusher = make_pusher(registry_basic)
    pusher.push_index("infra-ci", "latest", child_tags=["build-1-amd64", "build-1-arm64"], seed="1")
    for tag in ("build-1-amd64", "build-1-arm64", "latest"):
        set_age(registry_basic, "infra-ci", tag, 30)
    for number in range(2, 5):
        pusher.push_image("infra-ci", f"build-{number}", seed=str(number))
        set_age(registry_basic, "infra-ci", f"build-{number}", 20 - number)

    results = tmp_path / "results.json"
    tasks = [
        _retention_task("Plan", "planned", check_mode=True, diff=True),
        _retention_task("Apply", "applied", diff=True),
        {
            "name": "Keep what the tasks returned",
            "ansible.builtin.copy": {
                "content": "{{ {'planned': planned, 'applied': applied} | to_json }}",
                "dest": str(results),
                "mode": "0600",
            },
        },
    ]
    extra = {
        "storage_root": str(registry_basic.storage_root),
        "registry_url": registry_basic.url,
        "registry_user": registry_basic.username,
        "registry_password": registry_basic.password,
    }
    completed = run_registry_host_tasks(tmp_path, tasks, extra, play="Tag retention on the registry host",
                                        extra_args=["-vvv"])
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    assert str(registry_basic.password) not in output

    text = results.read_text(encoding="utf-8")
    assert str(registry_basic.password) not in text
    returned = json.loads(text)
    planned, applied = returned["planned"], returned["applied"]
    assert planned["changed"] is True and planned["deleted"] == []
    assert [item["tags"] for item in planned["planned"]] == [["build-2"], ["build-3"]]
    assert planned["diff"][0]["after"] == "build-1-amd64\nbuild-1-arm64\nbuild-4\nlatest\n"
    assert "-build-2" in completed.stdout  # the diff as Ansible prints it
    assert applied["changed"] is True
    assert [item["tags"] for item in applied["deleted"]] == [["build-2"], ["build-3"]]
    assert set(pusher.list_tags("infra-ci")) == {"latest", "build-1-amd64", "build-1-arm64", "build-4"}
