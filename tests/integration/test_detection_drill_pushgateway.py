# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The detection drill for a probe that keeps no files: the AWX probe job's playbook pushing to a Pushgateway.

The probe job template's own playbook and variables (playbooks/awx/vars/objects.yml) run with
ansible-playbook, once per scheduled run, in a fresh work directory each time: its only memory between
runs is what it pushed. Debian's Pushgateway holds the pushes; Debian's Prometheus scrapes it with
honor_labels and the shipped rules. The registry is broken by its real `garbage-collect --delete-untagged`.
The alerts are read from Prometheus's own API: the failure alert fires, stays firing through runs whose
credentials are rejected (while the catalog alert fires beside it), and both resolve after the rebuild.
"""

from __future__ import annotations

import pathlib
import time
import typing as t

import pytest

from tests.harness.images import ImagePusher
from tests.harness.incident import reproduce_incident
from tests.harness.monitoring import Service, start_prometheus
from tests.harness.pushgateway import start_pushgateway
from tests.harness.registry import RegistryServer
from tests.integration.test_awx_job_templates import objects
from tests.integration.test_detection_drill import RULES, SLACK, alert_names, wait_until
from tests.integration.test_playbooks_support import PlaybookRun, run_local_playbook

RULE_FOR = 60  # RegistryManifestIntegrityFailure's `for`


def probe_job(tmp_path: pathlib.Path, registry: RegistryServer, pushgateway: Service, password: str,
              run: int) -> PlaybookRun:
    """One scheduled run of the AWX probe job: its template's variables, a work directory of its own."""
    (template,) = [template for template in objects()["awx_job_templates"]
                   if template["name"] == "selfhosted.registry probe"]
    extra = {**template["extra_vars"], "verify_pushgateway_url": pushgateway.url, "verify_interval_seconds": 60,
             "registry_url": registry.url, "registry_username": registry.readonly_username, "registry_password": password}
    played = run_local_playbook(pathlib.Path(template["playbook"]).name, tmp_path, extra, f"run-{run}")
    assert password not in played.output
    return played


@pytest.mark.slow
def test_the_pushgateway_drill_keeps_the_alert_through_rejected_credentials_and_resolves_after_the_rebuild(
    tmp_path: pathlib.Path, registry_basic: RegistryServer, make_pusher: t.Callable[..., ImagePusher]
) -> None:
    registry = registry_basic
    pusher = make_pusher(registry)
    pusher.push_image("team/app", "v1")
    right, wrong = registry.readonly_password or "", "rotated-" + (registry.readonly_password or "")
    services: list[Service] = []
    try:
        services.append(pushgateway := start_pushgateway(tmp_path))
        services.append(prometheus := start_prometheus(tmp_path, f"127.0.0.1:{pushgateway.port}", [RULES],
                                                       job_name="pushgateway", honor_labels=True))
        assert (job := probe_job(tmp_path, registry, pushgateway, right, 1)).returncode == 0, job.explain()
        wait_until("the first push seen by Prometheus",
                   lambda: [s["value"][1] for s in prometheus.query("registry_verify_up")] == ["1"], SLACK)

        incident = reproduce_incident(registry, pusher)
        broken_at = time.monotonic()
        assert (job := probe_job(tmp_path, registry, pushgateway, right, 2)).returncode != 0, job.explain()

        def failure_firing() -> list[dict[str, t.Any]]:
            return prometheus.alerts("RegistryManifestIntegrityFailure", "firing")

        detected = wait_until("RegistryManifestIntegrityFailure firing", failure_firing, RULE_FOR + SLACK)
        assert [(a["labels"]["repository"], a["labels"]["tag"], a["labels"]["registry"]) for a in failure_firing()] \
            == [("infra-ci", "latest", registry.host)]
        active_since = failure_firing()[0]["activeAt"]

        # Two runs whose credentials are rejected: the catalog alert fires, and the failure alert never
        # resolves in between (no run could check the image).
        for run in (3, 4):
            assert (job := probe_job(tmp_path, registry, pushgateway, wrong, run)).returncode != 0, job.explain()
        inaccessible = wait_until("RegistryCatalogInaccessible firing",
                                  lambda: "RegistryCatalogInaccessible" in alert_names(prometheus), SLACK)
        # Still the same alert: it never resolved (and fired again) on runs that could not check the image.
        assert [a["activeAt"] for a in failure_firing()] == [active_since]
        assert [s["value"][1] for s in prometheus.query("registry_verify_image_broken_carried")] == ["1"]

        # The rebuild, then a run with the right credentials: both alerts resolve.
        pusher.push_index("infra-ci", "latest", platforms=("linux/amd64", "linux/arm64"), attestations=True,
                          shared_layers=incident.keep_image.layers[:1])
        rebuilt_at = time.monotonic()
        assert (job := probe_job(tmp_path, registry, pushgateway, right, 5)).returncode == 0, job.explain()
        resolved = wait_until("both alerts resolved",
                              lambda: not ({"RegistryManifestIntegrityFailure", "RegistryCatalogInaccessible"}
                                           & alert_names(prometheus, "firing")), SLACK)
        print(f"\npushgateway drill: failure fired {detected:.0f} s after the probe run that found it; catalog"
              f" alert {inaccessible:.0f} s after the second rejected run, the failure alert firing throughout;"
              f" both resolved {resolved:.0f} s after the run that followed the rebuild"
              f" ({time.monotonic() - rebuilt_at:.0f} s after the rebuild, {time.monotonic() - broken_at:.0f} s"
              f" from the GC)")
    finally:
        for service in reversed(services):
            service.stop()
