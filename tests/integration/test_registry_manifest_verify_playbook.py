# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""registry_manifest_verify run by ansible-playbook against the real registry with the real incident."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import typing as t

import pytest

from tests.harness.images import ImagePusher
from tests.harness.incident import reproduce_incident
from tests.harness.registry import RegistryServer

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
COLLECTIONS = REPO_ROOT / ".cache" / "collections"
ANSIBLE_PLAYBOOK = pathlib.Path(sys.executable).parent / "ansible-playbook"


def run_playbook(
    tmp_path: pathlib.Path,
    module_args: t.Dict[str, t.Any],
    *extra: str,
    env: t.Optional[t.Dict[str, str]] = None,
) -> t.Tuple[subprocess.CompletedProcess, t.Dict[str, t.Any]]:
    """One verify task, its registered result copied to a file even in check mode."""
    result_file = tmp_path / "result.json"
    result_file.unlink(missing_ok=True)
    playbook = [{
        "name": "Verify",
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [
            {"name": "Verify images", "selfhosted.registry.registry_manifest_verify": module_args,
             "register": "verify", "ignore_errors": True},
            {"name": "Keep the result",
             "ansible.builtin.copy": {"content": "{{ verify | to_json }}", "dest": str(result_file), "mode": "0600"},
             "check_mode": False},
        ],
    }]
    path = tmp_path / "verify.yml"
    path.write_text(json.dumps(playbook), encoding="utf-8")  # JSON is YAML
    full_env = {key: value for key, value in os.environ.items() if not key.startswith("REGISTRY_")}
    full_env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
    })
    full_env.update(env or {})
    process = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local", str(path), *extra],
        capture_output=True, text=True, env=full_env, timeout=600, check=False,
    )
    assert result_file.exists(), f"the playbook did not get to its second task:\n{process.stdout}\n{process.stderr}"
    return process, json.loads(result_file.read_text(encoding="utf-8"))


def test_playbook_names_the_incident(registry: RegistryServer, pusher: ImagePusher, tmp_path: pathlib.Path) -> None:
    incident = reproduce_incident(registry, pusher)
    keep = incident.keep_image
    process, result = run_playbook(tmp_path, {
        "registry_url": registry.url,
        "images": [incident.reference, f"{keep.repository}:{keep.tag}"],
    })
    assert result["failed"] is True and result["ok"] is False and result["changed"] is False
    reference = f"{incident.repository}:{incident.tag}"
    assert {b["digest"] for b in result["broken"]} == set(incident.missing_manifests)
    assert all(b["chain"] == [reference, incident.index.digest, b["digest"]] for b in result["broken"])
    for digest in incident.missing_manifests:
        assert f"{digest} answered 404 MANIFEST_UNKNOWN" in result["msg"]
    assert result["msg"].startswith("1 of 2 images are broken: infra-ci:latest: ")
    assert "Traceback" not in process.stdout + process.stderr


def test_check_mode_is_identical(registry: RegistryServer, pusher: ImagePusher, tmp_path: pathlib.Path) -> None:
    incident = reproduce_incident(registry, pusher)
    args = {"registry_url": registry.url, "images": [f"{incident.repository}:{incident.tag}"],
            "report_path": str(tmp_path / "report.json")}
    unused_process, normal = run_playbook(tmp_path, args)
    normal_report = json.loads((tmp_path / "report.json").read_text())
    (tmp_path / "report.json").unlink()
    unused_process, checked = run_playbook(tmp_path, args, "--check")
    checked_report = json.loads((tmp_path / "report.json").read_text())
    for key in ("failed", "ok", "changed", "msg", "images", "broken"):
        assert normal[key] == checked[key], key
    assert checked["changed"] is False
    assert normal_report["broken"] == checked_report["broken"]


def test_the_password_never_appears(registry_basic: RegistryServer, make_pusher: t.Callable,
                                    tmp_path: pathlib.Path) -> None:
    pusher = make_pusher(registry_basic)
    incident = reproduce_incident(registry_basic, pusher)
    password = registry_basic.password or ""
    report = tmp_path / "report.json"
    metrics = tmp_path / "verify.prom"
    outputs: t.List[str] = []
    # As a module argument, at the highest verbosity, on a failing run.
    process, result = run_playbook(tmp_path, {
        "registry_url": registry_basic.url, "username": registry_basic.username, "password": password,
        "images": [f"{incident.repository}:{incident.tag}"], "report_path": str(report),
        "metrics_path": str(metrics)}, "-vvvv")
    assert result["failed"] is True and len(result["broken"]) == len(incident.missing_manifests)
    outputs += [process.stdout, process.stderr, json.dumps(result), report.read_text(), metrics.read_text()]
    # From the environment.
    process, result = run_playbook(tmp_path, {"registry_url": registry_basic.url, "images": [incident.reference]},
                                   "-vvv", env={"REGISTRY_USERNAME": registry_basic.username or "",
                                                "REGISTRY_PASSWORD": password})
    assert result["broken"] and "rejected" not in result["msg"]
    outputs += [process.stdout, process.stderr, json.dumps(result)]
    # Rejected: the message says so, and shows neither password.
    wrong = "wrong-" + password
    process, result = run_playbook(tmp_path, {
        "registry_url": registry_basic.url, "username": registry_basic.username, "password": wrong,
        "images": [incident.reference]}, "-vvv")
    assert result["msg"] == (f"Registry {registry_basic.host} rejected the credentials for the v2 API"
                             f" of {registry_basic.host}.")
    outputs += [process.stdout, process.stderr, json.dumps(result)]
    assert password and all(password not in text for text in outputs)
    assert all(wrong not in text for text in outputs)


@pytest.mark.parametrize("args, message", [
    ({"images": ["infra-ci:latest@sha256:abc"]}, "has an invalid digest 'sha256:abc'"),
    ({"images": ["INFRA:latest"]}, "has an invalid repository name 'INFRA'"),
])
def test_malformed_reference_via_playbook(registry: RegistryServer, tmp_path: pathlib.Path,
                                          args: t.Dict[str, t.Any], message: str) -> None:
    process, result = run_playbook(tmp_path, dict({"registry_url": registry.url}, **args))
    assert result["failed"] is True
    assert message in result["msg"] and "\n" not in result["msg"]
    assert "Traceback" not in process.stdout + process.stderr


def test_unreachable_registry_via_playbook(tmp_path: pathlib.Path) -> None:
    from tests.harness.registry import free_port

    port = free_port()
    unused_process, result = run_playbook(tmp_path, {"registry_url": f"http://127.0.0.1:{port}",
                                                     "images": ["app:v1"]})
    assert result["msg"] == f"Could not reach the v2 API of 127.0.0.1:{port} at 127.0.0.1:{port}: connection refused."


def test_healthy_tls_registry_with_ca_path(registry_tls: RegistryServer, make_pusher: t.Callable,
                                           tmp_path: pathlib.Path) -> None:
    pushed = make_pusher(registry_tls).push_index("infra-ci", "latest")
    unused_process, result = run_playbook(tmp_path, {
        "registry_url": registry_tls.url, "ca_path": str(registry_tls.ca_path),
        "images": ["infra-ci:latest"], "blob_check": "read"})
    assert result.get("failed") is not True, result["msg"]
    assert result["ok"] is True and result["images"][0]["digest"] == pushed.digest
    unused_process, untrusted = run_playbook(tmp_path, {"registry_url": registry_tls.url,
                                                        "images": ["infra-ci:latest"]})
    assert untrusted["msg"] == (f"Could not reach the v2 API of {registry_tls.host} at {registry_tls.host}:"
                                " TLS certificate verification failed (unable to get local issuer certificate).")
