# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The loop for AWX users: extensions/eda/rulebooks/registry_heal_controller.yml, each step a job template.

No AWX or EDA controller can run here. What can be run is run: ansible-rulebook 1.3.2's own validation and
parser on both rulebooks (the same rules as the playbook variant, rule for rule, each naming a job template
configure.yml creates); ansible-rulebook started against a controller address nothing listens on (it refuses
to start, naming it); and, with only its start-up version question left out, the rulebook fed Alertmanager's
firing notification, which launches the diagnose job template there and nothing else.
"""

from __future__ import annotations

import json
import pathlib
import secrets
import subprocess
import typing as t

import pytest
import yaml

from tests.harness.eda import EDA_BIN, alertmanager_notification, post_notification, start_rulebook
from tests.harness.monitoring import ServiceStartError
from tests.harness.registry import free_port
from tests.integration.test_awx_job_templates import objects
from tests.integration.test_detection_drill import wait_until
from tests.integration.test_playbooks_support import COLLECTIONS

TOP = pathlib.Path(__file__).resolve().parents[2]
RULEBOOKS = TOP / "extensions" / "eda" / "rulebooks"
PLAYBOOK_VARIANT = RULEBOOKS / "registry_heal.yml"
CONTROLLER_VARIANT = RULEBOOKS / "registry_heal_controller.yml"
CONTROLLER_RULEBOOK = "selfhosted.registry.registry_heal_controller"
GUARD = 180  # a hang guard: the JVM's start and one refused request

# ansible-rulebook's own schema check and parser (what it runs before it starts a rulebook), on each file
# given; prints each rule as parsed: name, condition, action and its arguments.
PARSE = """
import json, sys, yaml
from ansible_rulebook.rules_parser import parse_rule_sets
from ansible_rulebook.validators import Validate

out = {}
for path in sys.argv[1:]:
    data = yaml.safe_load(open(path, encoding="utf-8"))
    Validate.rulebook(data)
    rulesets = parse_rule_sets(data, {"heal_webhook_host": "127.0.0.1", "heal_webhook_port": 1, "heal_webhook_token": "t"})
    out[path] = [{"name": rule.name, "condition": str(rule.condition), "actions": [
        {"action": action.action, "args": action.action_args} for action in rule.actions]}
        for ruleset in rulesets for rule in ruleset.rules]
print(json.dumps(out))
"""


def parse(*paths: pathlib.Path) -> dict[str, list[dict[str, t.Any]]]:
    run = subprocess.run([str(EDA_BIN / "python"), "-c", PARSE, *map(str, paths)], capture_output=True, text=True,
                         timeout=120, check=False)
    if run.returncode != 0:
        raise AssertionError(f"ansible-rulebook refuses {[p.name for p in paths]}:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout)


def test_both_variants_pass_ansible_rulebook_s_validation_with_the_same_rules() -> None:
    parsed = parse(PLAYBOOK_VARIANT, CONTROLLER_VARIANT)
    playbook_rules, controller_rules = parsed[str(PLAYBOOK_VARIANT)], parsed[str(CONTROLLER_VARIANT)]
    assert len(playbook_rules) == len(controller_rules) == 6
    templates = {template["name"]: template for template in objects()["awx_job_templates"]}
    for local, remote in zip(playbook_rules, controller_rules):
        assert (local["name"], local["condition"]) == (remote["name"], remote["condition"])
        ((run_playbook,), (run_job_template,)) = local["actions"], remote["actions"]
        assert run_playbook["action"] == "run_playbook", local
        assert run_job_template["action"] == "run_job_template", remote
        # The same playbook, with the same variables and the same hand-on of set_stats.
        template = templates[run_job_template["args"]["name"]]
        assert template["playbook"] == "playbooks/" + run_playbook["args"]["name"].rsplit(".", 1)[1] + ".yml"
        assert template.get("ask_variables_on_launch") is True, f"{template['name']} drops the event (ansible_eda)"
        assert run_job_template["args"].get("job_args", {}).get("extra_vars", {}) == \
            run_playbook["args"].get("extra_vars", {})
        assert run_job_template["args"].get("post_events") == run_playbook["args"].get("post_events")
        assert run_job_template["args"]["organization"] == "{{ heal_awx_organization | default('Default') }}"
    # Nothing reaches a rebuild but through the guard rails' decision.
    rebuilds = [rule for rule in controller_rules if "rebuild" in rule["actions"][0]["args"]["name"]]
    assert [rule["condition"] for rule in rebuilds][0] == str(controller_rules[2]["condition"])
    assert "heal_decision" in rebuilds[0]["condition"] and "rebuild_on_host_reason" in rebuilds[1]["condition"]
    assert controller_rules[1]["actions"][0]["args"]["name"] == "selfhosted.registry 1b heal decide (guard rails)"


def test_a_controller_action_without_its_organization_is_refused(tmp_path: pathlib.Path) -> None:
    """The validation above can fail: ansible-rulebook's schema requires a job template's organization."""
    rulebook = yaml.safe_load(CONTROLLER_VARIANT.read_text(encoding="utf-8"))
    del rulebook[0]["rules"][0]["action"]["run_job_template"]["organization"]
    broken = tmp_path / "registry_heal_controller.yml"
    broken.write_text(yaml.safe_dump(rulebook, sort_keys=False), encoding="utf-8")
    with pytest.raises(AssertionError, match="'organization' is a required property"):
        parse(broken)


def _environment(tmp_path: pathlib.Path, controller_token: str) -> dict[str, str]:
    return {"ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
            "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "EDA_CONTROLLER_TOKEN": controller_token,
            "NO_COLOR": "1"}


def test_without_its_controller_the_rulebook_does_not_start(tmp_path: pathlib.Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    controller_token = secrets.token_urlsafe(24)
    with pytest.raises(ServiceStartError) as refused:
        start_rulebook(tmp_path, CONTROLLER_RULEBOOK, None, secrets.token_urlsafe(24),
                       _environment(tmp_path, controller_token), controller_url=nowhere)
    log = (tmp_path / "rulebook.log").read_text()
    assert f"Attempting to connect to Controller {nowhere}" in log, log
    assert "Terminating: Cannot connect to host 127.0.0.1" in str(refused.value), log
    assert "running job template" not in log and "PLAY [" not in log
    assert controller_token not in log


def test_a_firing_alert_launches_the_diagnose_job_template_and_nothing_else(tmp_path: pathlib.Path) -> None:
    nowhere_port = free_port()
    nowhere = f"http://127.0.0.1:{nowhere_port}"
    controller_token = secrets.token_urlsafe(24)
    rulebook = start_rulebook(tmp_path, CONTROLLER_RULEBOOK, None, secrets.token_urlsafe(24),
                              _environment(tmp_path, controller_token), controller_url=nowhere,
                              check_controller=False)
    try:
        post_notification(rulebook, alertmanager_notification("firing", "fp-1"))
        wait_until("the job template's launch to fail at the controller",
                   lambda: "action.run_job_template - ERROR - Cannot connect" in rulebook.log_path.read_text(), GUARD)
    finally:
        rulebook.stop()
    log = rulebook.log_path.read_text()
    assert "running job template: selfhosted.registry 1 diagnose, organization: Default" in log, log
    assert f"Cannot connect to host 127.0.0.1:{nowhere_port}" in log, log
    # Only diagnose: no other job template, no playbook, and the guard rails' decision was never reached.
    assert log.count("running job template:") == 1, log
    assert "PLAY [" not in log and "ansible-playbook" not in log
    assert controller_token not in log
