# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""rebuild_ci.yml against the loopback Woodpecker server and the real registry.

The "pipeline" is played by the test: once the playbook has started it and is polling it, a thread
re-pushes the image to the real registry with the harness pusher and only then moves the pipeline to
its final status. The playbook's verify then checks the registry for real.
"""

from __future__ import annotations

import pathlib
import threading
import time
import typing as t


from tests.harness.images import ImagePusher, make_layer
from tests.harness.incident import Incident
from tests.harness.registry import RegistryServer
from tests.harness.sshd import SshServer
from tests.harness.woodpecker_server import PIPELINE_GUARD_SECONDS, FakeWoodpecker, PlayedPipeline
from tests.integration.conftest import CI
from tests.integration.test_playbooks_support import PlaybookRun, run_local_playbook, run_playbook, write_inventory


def _rebuild(tmp_path: pathlib.Path, extra: dict[str, t.Any], token: str | None, workdir: str = "run",
             env_extra: dict[str, str] | None = None, **options: t.Any) -> PlaybookRun:
    """rebuild_ci.yml with the token in WOODPECKER_TOKEN (None: the caller passes it another way)."""
    env = {**({"WOODPECKER_TOKEN": token} if token else {}), **(env_extra or {})} or None
    return run_local_playbook("rebuild_ci.yml", tmp_path, extra, workdir, env=env, **options)


def _extra_vars(registry: RegistryServer, fake: FakeWoodpecker, **more: t.Any) -> dict[str, t.Any]:
    values = {
        "registry_url": registry.url,
        "registry_images": "infra-ci:latest",
        "woodpecker_url": fake.url,
        "rebuild_pipelines": {"infra-ci": {"repo": "ops/infra-ci", "branch": "main", "variables": {"IMAGE_TAG": "latest"}}},
        "rebuild_poll_interval": 0.2,
    }
    values.update(more)
    return values


def _ci_push(registry: RegistryServer) -> t.Callable[[], None]:
    """What the CI job does: push the multi-arch image again, asking the registry which blobs it has
    first (as docker push does), so a lying blob cache makes it skip uploads."""

    def push() -> None:
        pusher = ImagePusher(registry, check_existing=True)  # a fresh client, as a CI runner would be
        try:
            base = make_layer("infra-ci||shared base layer\n")
            pusher.push_index("infra-ci", "latest", shared_layers=[base])
        finally:
            pusher.session.close()

    return push


def test_rebuild_ci_triggers_waits_and_verifies_the_rebuilt_image(
    tmp_path: pathlib.Path, registry: RegistryServer, pusher: ImagePusher, incident: Incident, ci: CI
) -> None:
    fake, repo_id, token = ci
    # A consumer whose pipeline failed because it could not pull infra-ci:latest: re-run once the image verifies.
    app_repo = fake.add_repo("team", "app", push=[token])
    app_failed = fake.add_pipeline(app_repo, status="failure")
    extra = _extra_vars(registry, fake, rebuild_rerun_pipelines=[{"repo": "team/app", "pipeline": app_failed}])
    with PlayedPipeline(fake, repo_id, _ci_push(registry)) as pipeline:
        run = _rebuild(tmp_path, extra, token)

    assert pipeline.error is None, pipeline.error
    assert run.returncode == 0, run.explain()
    triggers = [r for r in fake.api_requests("POST") if r.path == f"/api/repos/{repo_id}/pipelines"]
    assert len(triggers) == 1
    assert [r.path for r in fake.api_requests("POST") if f"/repos/{app_repo}/" in r.path] == [
        f"/api/repos/{app_repo}/pipelines/{app_failed}"]
    assert f"re-run: Restarted team/app#{app_failed} as Woodpecker pipeline team/app#{app_failed + 1}" in run.stdout, \
        run.explain()
    assert "next: nothing; the images verify and the failed pipelines were re-run" in run.stdout, run.explain()
    assert b'"IMAGE_TAG": "latest"' in triggers[0].body or b'"IMAGE_TAG":"latest"' in triggers[0].body
    assert f"Woodpecker pipeline ops/infra-ci#{pipeline.number}, status success" in run.stdout, run.explain()
    assert "1 of 1 image(s) verify end to end" in run.stdout, run.explain()
    assert token not in run.output
    for child in incident.index.children:
        assert pusher.manifest_exists("infra-ci", child.digest)


def test_rebuild_ci_starts_a_shared_pipeline_once_and_all_pipelines_before_waiting(
    tmp_path: pathlib.Path, registry: RegistryServer, pusher: ImagePusher, incident: Incident, ci: CI
) -> None:
    """infra-ci:latest and infra-ci:latest-base map to one pipeline; base/python:3.12 to another. The
    infra-ci pipeline only finishes once the base-images pipeline has been started: a playbook that waited
    for one pipeline before starting the next would never see it finish."""
    pusher.push_index("base/python", "3.12", seed="python")
    fake, ci_repo, token = ci
    base_repo = fake.add_repo("ops", "base-images", push=[token])
    fake.plan(base_repo, ["pending", "running", "success"])

    def push_after_base_started() -> None:
        deadline = time.monotonic() + 120  # a sequential playbook would leave this waiting: fail, don't hang
        while not fake.repos[base_repo].pipelines:
            if time.monotonic() > deadline:
                raise AssertionError("the base-images pipeline was not started while infra-ci's was running")
            time.sleep(0.05)
        _ci_push(registry)()

    extra = _extra_vars(
        registry, fake,
        registry_images="infra-ci:latest infra-ci:latest-base base/python:3.12",
        rebuild_pipelines={
            "infra-ci": {"repo": "ops/infra-ci", "branch": "main"},
            "base/python:3.12": {"repo": "ops/base-images", "variables": {"IMAGE": "python"}},
        },
        rebuild_wait_timeout=180,
    )
    with PlayedPipeline(fake, ci_repo, push_after_base_started) as pipeline:
        run = _rebuild(tmp_path, extra, token)

    assert pipeline.error is None, pipeline.error
    assert run.returncode == 0, run.explain()
    triggers = [r.path for r in fake.api_requests("POST")]
    assert sorted(triggers) == sorted([f"/api/repos/{ci_repo}/pipelines", f"/api/repos/{base_repo}/pipelines"])
    assert "Woodpecker pipeline ops/base-images#1, status success" in run.stdout, run.explain()
    assert "3 of 3 image(s) verify end to end" in run.stdout, run.explain()


def test_rebuild_ci_restarts_the_newest_failed_pipeline(
    tmp_path: pathlib.Path, registry: RegistryServer, incident: Incident, ci: CI
) -> None:
    fake, repo_id, token = ci
    failed = fake.add_pipeline(repo_id, status="failure", branch="main")  # the pipeline that hit the 404
    with PlayedPipeline(fake, repo_id, _ci_push(registry), after=failed) as pipeline:
        run = _rebuild(tmp_path, _extra_vars(registry, fake, rebuild_action="restart"), token)

    assert pipeline.error is None, pipeline.error
    assert run.returncode == 0, run.explain()
    assert [r.path for r in fake.api_requests("POST")] == [f"/api/repos/{repo_id}/pipelines/{failed}"]
    assert fake.stored(repo_id, pipeline.number)["parent"] == failed
    assert f"Woodpecker pipeline ops/infra-ci#{pipeline.number}, status success" in run.stdout, run.explain()
    assert "1 of 1 image(s) verify end to end" in run.stdout, run.explain()


def test_rebuild_ci_reports_a_failed_pipeline_and_the_image_still_broken(
    tmp_path: pathlib.Path, registry: RegistryServer, incident: Incident, ci: CI
) -> None:
    fake, repo_id, token = ci
    with PlayedPipeline(fake, repo_id, lambda: None, final_status="failure") as pipeline:
        # The token as an extra var this time (a vault value), and -v to show every task result.
        run = _rebuild(tmp_path, _extra_vars(registry, fake, woodpecker_token=token), None, extra_args=["-v"])

    assert pipeline.error is None, pipeline.error
    assert run.returncode != 0
    assert f"Woodpecker pipeline ops/infra-ci#{pipeline.number} finished with status failure" in run.stdout, run.explain()
    assert "push-image" in run.stdout and "unauthorized: push refused" in run.stdout, run.explain()
    assert "0 of 1 image(s) verify end to end" in run.stdout, run.explain()
    assert f"Pipelines that did not succeed: ops/infra-ci#{pipeline.number}." in run.stdout, run.explain()
    assert f"next: fix what failed in ops/infra-ci#{pipeline.number} (the step and log are shown above), then run " \
           "this playbook again" in run.stdout, run.explain()
    assert "Still broken: infra-ci:latest." in run.stdout
    assert incident.missing_manifests[0] in run.stdout
    assert token not in run.output


def test_rebuild_ci_check_mode_sends_nothing_to_woodpecker(
    tmp_path: pathlib.Path, registry: RegistryServer, incident: Incident, ci: CI
) -> None:
    fake, _repo_id, token = ci
    run = _rebuild(tmp_path, _extra_vars(registry, fake), token, check=True)

    assert run.returncode == 0, run.explain()
    assert fake.api_requests() == []
    assert "would start a manual pipeline on main of ops/infra-ci" in run.stdout, run.explain()
    assert "(check mode: nothing was rebuilt)" in run.stdout, run.explain()


def test_rebuild_ci_refuses_an_image_without_a_pipeline(tmp_path: pathlib.Path, registry: RegistryServer, ci: CI) -> None:
    fake, _repo_id, token = ci
    run = _rebuild(tmp_path, _extra_vars(registry, fake, registry_images=["infra-ci:latest", "base/python:3.12"]), token)

    assert run.returncode != 0
    assert "No pipeline in rebuild_pipelines for: base/python:3.12." in run.stdout, run.explain()
    assert fake.api_requests("POST") == []


def test_rebuild_ci_with_the_cache_lie_fails_until_the_registry_is_restarted(
    tmp_path: pathlib.Path, registry: RegistryServer, pusher: ImagePusher, ci: CI
) -> None:
    """GC on a running registry: the CI push skips layers the blob cache pretends to hold. The playbook's
    read check catches it; with rebuild_restart_command the registry is restarted first and the same
    rebuild passes."""
    base = make_layer("infra-ci||shared base layer\n")
    pusher.push_image("infra-ci", "latest-base", layers=[base])
    index = pusher.push_index("infra-ci", "latest", shared_layers=[base])
    result = registry.garbage_collect(delete_untagged=True)  # while it runs: the cache keeps lying
    assert result.returncode == 0, result.stderr
    assert not pusher.manifest_exists("infra-ci", index.children[0].digest)

    fake, repo_id, token = ci
    with PlayedPipeline(fake, repo_id, _ci_push(registry)) as first:
        lied = _rebuild(tmp_path, _extra_vars(registry, fake), token, "run1")
    assert first.error is None, first.error
    assert lied.returncode != 0, lied.explain()
    assert f"Woodpecker pipeline ops/infra-ci#{first.number}, status success" in lied.stdout, lied.explain()
    assert "rebuild_restart_command is not set" in lied.stdout
    assert "Still broken: infra-ci:latest." in lied.stdout, lied.explain()

    # The remedy: the playbook restarts the registry (the command asks this test, which owns the process).
    request, done = tmp_path / "restart-requested", tmp_path / "restart-done"
    restart_script = tmp_path / "restart-registry.sh"
    restart_script.write_text(
        f"#!/bin/sh\ntouch {request}\nwhile [ ! -e {done} ]; do sleep 0.1; done\necho registry restarted\n",
        encoding="utf-8",
    )
    restart_script.chmod(0o755)

    def restart_on_request() -> None:
        deadline = time.monotonic() + PIPELINE_GUARD_SECONDS
        while not request.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        registry.restart()
        done.touch()

    restarter = threading.Thread(target=restart_on_request, daemon=True)
    restarter.start()
    fake.plan(repo_id, ["pending", "running"])
    with PlayedPipeline(fake, repo_id, _ci_push(registry), after=first.number or 0) as second:
        fixed = _rebuild(tmp_path, _extra_vars(registry, fake, rebuild_restart_command=str(restart_script)), token, "run2")
    restarter.join(timeout=PIPELINE_GUARD_SECONDS)

    assert second.error is None, second.error
    assert fixed.returncode == 0, fixed.explain()
    assert "1 of 1 image(s) verify end to end" in fixed.stdout, fixed.explain()
    assert request.exists() and done.exists()


def test_rebuild_ci_says_to_build_on_the_host_when_ci_cannot_pull_its_own_image(
    tmp_path: pathlib.Path, registry: RegistryServer, incident: Incident, ci: CI
) -> None:
    """The pipeline's step runs in infra-ci:latest, the broken image: it ends in error before any command."""
    fake, repo_id, token = ci
    pull_error = f"Error response from daemon: manifest for {registry.host}/infra-ci:latest not found: manifest unknown"

    def ci_cannot_start() -> None:
        fake.advance(repo_id, 1, "error", failing_step="clone", step_error=pull_error)

    with PlayedPipeline(fake, repo_id, ci_cannot_start, final_status="error") as pipeline:
        run = _rebuild(tmp_path, _extra_vars(registry, fake), token)

    assert pipeline.error is None, pipeline.error
    assert run.returncode != 0
    assert f"step clone (workflow build) ended error: {pull_error}" in run.stdout, run.explain()
    assert "next: CI cannot pull its own image (infra-ci:latest), so no pipeline can rebuild it: build it on the " \
           "registry host with ansible-playbook -i inventory.yml playbooks/rebuild_on_host.yml " \
           f"-e registry_url={registry.url} -e registry_images=infra-ci:latest -e @rebuild_builds.yml" in run.stdout, \
        run.explain()


def test_rebuild_ci_reports_a_pipeline_that_never_started_and_a_fallback_trigger(
    tmp_path: pathlib.Path, registry: RegistryServer, pusher: ImagePusher, incident: Incident, ci: CI
) -> None:
    pusher.push_index("base/python", "3.12", seed="python")
    fake, ci_repo, token = ci
    # infra-ci's last pipeline errored before its configuration was stored: its restart falls back to a trigger.
    lost = fake.add_pipeline(ci_repo, status="error", event="manual", config_stored=False)
    fake.repos[ci_repo].plans = []
    fake.plan(ci_repo, ["pending", "success"])
    base_repo = fake.add_repo("ops", "base-images", push=[token])
    fake.repos[base_repo].manual_config = "filtered"  # no workflow runs on a manual event
    extra = _extra_vars(
        registry, fake,
        registry_images="infra-ci:latest base/python:3.12",
        rebuild_pipelines={
            "infra-ci": {"repo": "ops/infra-ci", "branch": "main", "action": "restart"},
            "base/python": {"repo": "ops/base-images"},
        },
    )
    run = _rebuild(tmp_path, extra, token)

    assert run.returncode != 0
    assert f"Started Woodpecker pipeline ops/infra-ci#{lost + 2} (manual on main) in place of restarting #{lost}, " \
           "whose definition the server lost" in run.stdout, run.explain()
    assert "ops/base-images: never started: Woodpecker repository ops/base-images, manual pipeline on branch main: " \
           "nothing was started because no workflow runs for event manual" in run.stdout, run.explain()
    assert "Pipelines that did not succeed: ops/base-images (never started)." in run.stdout, run.explain()


def test_rebuild_ci_starts_the_pipelines_when_the_registry_vm_cannot_be_reached(
    tmp_path: pathlib.Path, registry: RegistryServer, incident: Incident, ci: CI, sshd_server: SshServer
) -> None:
    """The restart before the pipelines needs SSH to the VM; without it the pipelines still run, and the
    summary says the restart was skipped and why."""
    fake, repo_id, token = ci
    inventory = write_inventory(tmp_path / "inventory.yml", registry_vm=sshd_server.inventory_vars())
    sshd_server.stop()  # the VM is down, or SSH to it is
    extra = _extra_vars(registry, fake, rebuild_restart_command="docker compose restart private")
    with PlayedPipeline(fake, repo_id, _ci_push(registry)) as pipeline:
        run = run_playbook("rebuild_ci.yml", inventory, extra, tmp_path / "run", env={"WOODPECKER_TOKEN": token})

    assert pipeline.error is None, pipeline.error
    assert run.returncode == 0, run.explain()
    assert "registry-vm could not be reached over SSH" in run.stdout, run.explain()
    assert "so the registry was not restarted" in run.stdout, run.explain()
    assert len([r for r in fake.api_requests("POST") if r.path == f"/api/repos/{repo_id}/pipelines"]) == 1
    assert "1 of 1 image(s) verify end to end" in run.stdout, run.explain()


def test_rebuild_ci_points_to_the_registry_host_when_woodpecker_cannot_be_reached(
    tmp_path: pathlib.Path, registry: RegistryServer, incident: Incident
) -> None:
    from tests.harness.registry import free_port

    down = f"http://127.0.0.1:{free_port()}"
    extra = {"registry_url": registry.url, "registry_images": "infra-ci:latest", "woodpecker_url": down,
             "rebuild_pipelines": {"infra-ci": {"repo": "ops/infra-ci"}}}
    run = _rebuild(tmp_path, extra, "not-a-real-token", env_extra={"ANSIBLE_SHOW_CUSTOM_STATS": "true"})

    assert run.returncode != 0
    assert "next: Woodpecker could not be reached (" in run.stdout, run.explain()
    assert "build on the registry host with ansible-playbook -i inventory.yml playbooks/rebuild_on_host.yml " \
           f"-e registry_url={registry.url} -e registry_images=infra-ci:latest" in run.stdout, run.explain()
    # The AWX workflow's failure path, rebuild_on_host, builds only with this reason.
    stats = run.stdout[run.stdout.index("CUSTOM STATS"):]
    assert '"rebuild_on_host_reason": "Woodpecker could not be reached"' in stats, run.explain()
    assert "not-a-real-token" not in run.output
