# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AWX objects as code (playbooks/awx/): names that match the playbooks, arguments awx.awx accepts.

No AWX can run here. What can be checked is checked: every survey variable, injector and job template
variable is one the phase playbooks read; every task's arguments pass the awx.awx modules' own
argument specs (the real modules run, against a controller address nothing listens on, so each stops
at its first request and says so, or fails earlier on an argument it refuses).
"""

from __future__ import annotations

import json
import pathlib
import re
import secrets
import subprocess
import typing as t

import pytest
import yaml

from tests.harness.registry import free_port
from tests.integration.test_playbooks_support import COLLECTIONS, PLAYBOOKS, REPO_ROOT, VENV_BIN

AWX = PLAYBOOKS / "awx"


class _Loader(yaml.SafeLoader):
    """Reads Ansible's !unsafe as the plain string it marks."""


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def objects() -> dict[str, t.Any]:
    return yaml.load((AWX / "vars" / "objects.yml").read_text(encoding="utf-8"), Loader=_Loader)


def playbook_code() -> str:
    """The phase playbooks and their shared vars, comments left out: what they actually read."""
    files = sorted(PLAYBOOKS.glob("*.yml")) + [PLAYBOOKS / "vars" / "runbook_common.yml"]
    return "\n".join(
        re.sub(r"(^|\s)#.*$", "", line) for path in files for line in path.read_text(encoding="utf-8").splitlines()
    )


def environment_names_read() -> set[str]:
    """Environment variables the modules fall back to, and those the playbooks look up."""
    names: set[str] = set()
    for path in (REPO_ROOT / "plugins").rglob("*.py"):
        for group in re.findall(r"env_fallback,\s*\[([^\]]*)\]", path.read_text(encoding="utf-8")):
            names.update(re.findall(r"['\"](\w+)['\"]", group))
    names.update(re.findall(r"lookup\('ansible\.builtin\.env',\s*'(\w+)'\)", playbook_code()))
    return names


def _reads(code: str, variable: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(variable)}(?!\w)", code) is not None


def survey_questions() -> list[tuple[str, dict[str, t.Any]]]:
    data = objects()
    questions = [(template["name"], question) for template in data["awx_job_templates"] for question in template["survey"]]
    return questions + [(data["awx_workflow"]["name"], question) for question in data["awx_workflow"]["survey"]]


def test_every_survey_and_job_template_variable_is_one_the_playbooks_read() -> None:
    code = playbook_code()
    data = objects()
    names = [(where, question["variable"]) for where, question in survey_questions()]
    names += [(template["name"], key) for template in data["awx_job_templates"] for key in template.get("extra_vars", {})]
    assert names
    unread = [f"{where}: {name}" for where, name in names if not _reads(code, name)]
    assert not unread, f"variables no playbook reads: {unread}"
    # A survey answer is a string: a true/false question must be read through | bool.
    for where, question in survey_questions():
        if question["type"] == "multiplechoice" and set(question["choices"]) == {"true", "false"}:
            assert re.search(rf"{question['variable']} \| default\([^)]*\) \| bool", code), f"{where}: {question['variable']}"


def test_every_injector_name_is_one_the_playbooks_or_modules_read() -> None:
    env_read = environment_names_read()
    code = playbook_code()
    assert {"REGISTRY_USERNAME", "REGISTRY_PASSWORD", "WOODPECKER_SERVER", "WOODPECKER_TOKEN"} <= env_read
    for key, credential_type in objects()["awx_credential_types"].items():
        injectors = credential_type["injectors"]
        fields = {field["id"] for field in credential_type["inputs"]["fields"]}
        assert set(injectors) <= {"env", "extra_vars"}, f"{key}: inject through the environment or extra vars only"
        for name in injectors.get("env", {}):
            assert name in env_read, f"{key}: nothing reads the environment variable {name}"
        for name in injectors.get("extra_vars", {}):
            assert _reads(code, name), f"{key}: no playbook reads the extra variable {name}"
        for value in [*injectors.get("env", {}).values(), *injectors.get("extra_vars", {}).values()]:
            used = re.fullmatch(r"\{\{ (\w+) \}\}", value)
            assert used and used.group(1) in fields, f"{key}: {value} is not one of its input fields {sorted(fields)}"
        for field in credential_type["inputs"]["fields"]:
            if field["id"] in ("password", "token"):
                assert field.get("secret") is True, f"{key}: {field['id']} must be secret"


def test_job_templates_workflow_and_schedule_fit_together() -> None:
    data = objects()
    names = {template["name"] for template in data["awx_job_templates"]}
    for template in data["awx_job_templates"]:
        assert (REPO_ROOT / template["playbook"]).is_file(), template["playbook"]
        assert set(template["credentials"]) <= {"registry", "woodpecker", "machine"}
    phases = {pathlib.Path(template["playbook"]).stem for template in data["awx_job_templates"]}
    assert phases == {"diagnose", "heal_decide", "rebuild_ci", "rebuild_on_host", "verify", "investigate"}
    nodes = {node["identifier"]: node for node in data["awx_workflow"]["nodes"]}
    for node in nodes.values():
        assert node["unified_job_template"]["name"] in names
        for targets in node.get("related", {}).values():
            assert {target["identifier"] for target in targets} <= set(nodes)
    # The rebuild follows a diagnosis that confirmed broken images (its success), never a failure of diagnose.
    assert nodes["diagnose"]["related"] == {"success_nodes": [{"identifier": "rebuild_ci"}]}
    assert data["awx_workflow"]["extra_vars"] == {"runbook_workflow": True}
    assert nodes["rebuild_ci"]["related"]["failure_nodes"] == [{"identifier": "rebuild_on_host"}]
    schedule = data["awx_probe_schedule"]
    assert schedule["job_template"] in names
    assert "FREQ=MINUTELY;INTERVAL=15" in schedule["rrule"]


@pytest.fixture
def settings(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({
        "awx_project_scm_url": "https://git.example/ops/selfhosted-registry.git",
        "awx_ee_image": "registry.example:5000/selfhosted-registry-ee:1",
        "awx_inventory": "registry", "awx_pushgateway_url": "http://pushgateway.example:9091",
        "awx_machine_credential": "registry-vm ssh",
        "awx_registry_url": "https://registry.example:5000", "awx_registry_username": "reader",
        "awx_registry_password": "not-a-secret", "awx_woodpecker_server": "https://ci.example",
        "awx_woodpecker_token": "not-a-token", "awx_rebuild_pipelines": {"infra-ci": {"repo": "ops/infra-ci"}},
        "awx_rebuild_builds": {"infra-ci:latest": {"source": "https://git.example/infra-ci.git", "command": "make push"}},
    }), encoding="utf-8")
    return path


def configure(tmp_path: pathlib.Path, playbook: pathlib.Path, settings: pathlib.Path, env: dict[str, str],
              *arguments: str) -> subprocess.CompletedProcess[str]:
    """ansible-playbook ``playbook`` (configure.yml or a copy) with the settings file, on localhost."""
    environment = {
        "PATH": f"{VENV_BIN}:/usr/bin:/bin", "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false", "ANSIBLE_PYTHON_INTERPRETER": str(VENV_BIN / "python"),
        "ANSIBLE_NOCOLOR": "1", "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_LOCALHOST_WARNING": "false",
        "CONTROLLER_OAUTH_TOKEN": "not-a-token", **env,
    }
    return subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", str(playbook), "-e", f"@{settings}",
                           *arguments], env=environment, capture_output=True, text=True, timeout=600, check=False)


def test_the_awx_awx_modules_accept_every_task_s_arguments(tmp_path: pathlib.Path, settings: pathlib.Path) -> None:
    # A copy that carries on past each failure and shows every result (the inputs hold no secret).
    copy = tmp_path / "awx"
    (copy / "vars").mkdir(parents=True)
    (copy / "vars" / "objects.yml").write_text((AWX / "vars" / "objects.yml").read_text(encoding="utf-8"))
    plays = yaml.safe_load((AWX / "configure.yml").read_text(encoding="utf-8"))
    tasks = plays[0]["tasks"]
    awx_tasks = [task["name"] for task in tasks if any(key.startswith("awx.awx.") for key in task)]
    assert len(awx_tasks) == 8
    for task in tasks:
        task["ignore_errors"] = True
        task.pop("no_log", None)
    (copy / "configure.yml").write_text(yaml.safe_dump(plays, sort_keys=False), encoding="utf-8")
    nowhere = f"http://127.0.0.1:{free_port()}"
    run = configure(tmp_path, copy / "configure.yml", settings, {"CONTROLLER_HOST": nowhere})
    assert run.returncode == 0, run.stdout + run.stderr
    # Without eda_controller_url nothing is asked of an EDA controller.
    assert re.search(r"TASK \[EDA controller \| the rulebook's project[^\n]*\n(?:\[[^\n]*\n)*skipping: \[localhost\]",
                     run.stdout), run.stdout[-2000:]
    # Each awx.awx task (each loop item) got past its argument spec and stopped at the controller.
    results: dict[str, list[str]] = {name: [] for name in awx_tasks}
    current = None
    for line in run.stdout.splitlines():
        task = re.match(r"^TASK \[(.*)\]", line)
        if task:
            current = task.group(1)
        failure = re.match(r"^(?:fatal|failed): \[localhost\](?: \(item=.*?\))?(?:: FAILED!)? => (\{.*\})$", line)
        if failure and current in results:
            results[current].append(json.loads(failure.group(1))["msg"])
    expected_items = {"Create the custom credential types": 2, "Create one job template per phase, with its survey": 7}
    for name, messages in results.items():
        assert len(messages) == expected_items.get(name, 1), f"{name}: {messages}\n{run.stdout[-4000:]}"
        for message in messages:
            assert "Connection refused" in message and nowhere in message, f"{name}: {message}"


EDA_TASKS = "EDA controller | the rulebook's project, a decision environment and the activation"


@pytest.fixture
def eda_settings(tmp_path: pathlib.Path, settings: pathlib.Path) -> pathlib.Path:
    """The settings above plus the EDA controller's, its address one nothing listens on."""
    path = tmp_path / "eda-settings.json"
    path.write_text(json.dumps({
        **json.loads(settings.read_text(encoding="utf-8")),
        "eda_controller_url": f"http://127.0.0.1:{free_port()}/", "eda_aap_credential": "awx launcher",
        "eda_decision_environment_image": "registry.example:5000/selfhosted-registry-de:1",
        "eda_heal_webhook_token": "webhook-" + secrets.token_urlsafe(16),
    }), encoding="utf-8")
    return path


@pytest.mark.parametrize("check", [False, True], ids=["run", "check-mode"])
def test_the_eda_controller_tasks_stop_at_the_first_request_and_show_no_token(
    tmp_path: pathlib.Path, eda_settings: pathlib.Path, check: bool
) -> None:
    eda = json.loads(eda_settings.read_text(encoding="utf-8"))
    token = "eda-" + secrets.token_urlsafe(16)
    run = configure(tmp_path, AWX / "configure.yml", eda_settings, {"EDA_CONTROLLER_TOKEN": token},
                    "--start-at-task", EDA_TASKS, "-vvv", *(["--check"] if check else []))
    output = run.stdout + run.stderr
    assert run.returncode == 2, output[-3000:]
    # The inputs passed; the first request (a read, so check mode makes it too) found nothing listening.
    url = eda["eda_controller_url"].rstrip("/") + "/api/eda/v1/organizations/?name=Default"
    assert f"GET {url} (find the organization Default): no answer: Request failed: " in output, output[-3000:]
    assert "Connection refused" in output
    assert "TASK [EDA controller | find the project" not in output
    for secret in (token, eda["eda_heal_webhook_token"]):
        assert secret not in output


@pytest.mark.parametrize("missing", ["eda_aap_credential", "eda_decision_environment_image", "eda_heal_webhook_token",
                                     "token"])
def test_the_eda_controller_inputs_are_checked_before_any_request(
    tmp_path: pathlib.Path, eda_settings: pathlib.Path, missing: str
) -> None:
    eda = json.loads(eda_settings.read_text(encoding="utf-8"))
    eda.pop(missing, None)
    eda_settings.write_text(json.dumps(eda), encoding="utf-8")
    env = {} if missing == "token" else {"EDA_CONTROLLER_TOKEN": "eda-" + secrets.token_urlsafe(16)}
    run = configure(tmp_path, AWX / "configure.yml", eda_settings, env, "--start-at-task", EDA_TASKS)
    assert run.returncode == 2, run.stdout[-3000:]
    assert "TASK [EDA controller | check the inputs]" in run.stdout
    assert "With eda_controller_url set, set the token (EDA_CONTROLLER_TOKEN" in run.stdout + run.stderr
    assert "find the organization" not in run.stdout
