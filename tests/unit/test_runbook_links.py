# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every alert's runbook link lands on a section that exists, under the base the role rewrites."""

from __future__ import annotations

import pathlib
import re

import yaml

TOP = pathlib.Path(__file__).resolve().parents[2]
RULES = TOP / "roles/registry_probe/files/prometheus/selfhosted-registry.rules.yml"
RUNBOOK = TOP / "playbooks/README.md"


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_github_anchor_follows_github() -> None:
    assert github_anchor("Phase 1 — confirm the diagnosis: `diagnose.yml`") == "phase-1--confirm-the-diagnosis-diagnoseyml"


def test_every_alert_links_to_its_own_section_of_the_runbook_under_the_shipped_base() -> None:
    anchors = {github_anchor(line.lstrip("#")) for line in RUNBOOK.read_text(encoding="utf-8").splitlines()
               if line.startswith("#")}
    shipped = yaml.safe_load((TOP / "roles/registry_probe/vars/main.yml").read_text())[
        "registry_probe_shipped_runbook_url"]
    galaxy = yaml.safe_load((TOP / "galaxy.yml").read_text())
    assert shipped == galaxy["repository"] + "/blob/main/playbooks/README.md"
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert rules
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        assert url == f"{shipped}#{rule['alert'].lower()}", rule["alert"]
        assert rule["alert"].lower() in anchors, f"{rule['alert']}: no such section in playbooks/README.md"
    # Links inside the runbook to its own sections exist too.
    for target in re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text(encoding="utf-8")):
        assert target in anchors, target
