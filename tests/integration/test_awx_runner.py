# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every phase playbook and the probe run as AWX runs a job: ansible-runner transmit | docker run -i <EE>
ansible-runner worker | ansible-runner process, in the execution environment built from ee/.

Against the real registry, the test Woodpecker server and the real sshd on loopback. Extra variables
are what a survey sends (strings; lists as text, one item per line); credentials are injected exactly as
the shipped credential types' injectors say (playbooks/awx/vars/objects.yml): environment variables and
extra variables, the SSH key through ansible-runner's ssh-agent. Each test reads the job's events: the
verdict, the set_stats artifacts a workflow's next node gets, and no secret anywhere in what the worker sent.
"""

from __future__ import annotations

import json
import pathlib
import typing as t

import jinja2
import pytest

from tests.harness.awx_docker import DockerDaemon
from tests.harness.awx_runner import Job, controller_inventory, run_job
from tests.harness.images import ImagePusher
from tests.harness.incident import reproduce_incident
from tests.harness.pushgateway import samples, start_pushgateway
from tests.harness.registry import RegistryServer
from tests.harness.sshd import SshServer
from tests.integration.test_awx_job_templates import objects
from tests.integration.conftest import CI
from tests.harness.woodpecker_server import PlayedPipeline
from tests.integration.test_playbooks_rebuild_ci import _ci_push
from tests.integration.test_playbooks_rebuild_on_host import make_source_repo

pytestmark = pytest.mark.slow


def inject(kind: str, **inputs: str) -> tuple[dict[str, str], dict[str, str]]:
    """A credential of the shipped type ``kind``: its env and extra_vars, rendered as AWX renders injectors."""
    injectors = objects()["awx_credential_types"][kind]["injectors"]

    def render(template: str) -> str:
        return jinja2.Template(template, undefined=jinja2.StrictUndefined).render(**inputs)

    return ({name: render(value) for name, value in injectors.get("env", {}).items()},
            {name: render(value) for name, value in injectors.get("extra_vars", {}).items()})


def registry_credential(registry: RegistryServer) -> tuple[dict[str, str], dict[str, str]]:
    return inject("registry", url=registry.url, username=registry.username or "", password=registry.password or "")


def run_on_the_vm(engine: tuple[DockerDaemon, str], registry: RegistryServer, sshd: SshServer, tmp_path: pathlib.Path,
                  playbook: str, extravars: dict[str, t.Any]) -> Job:
    """A phase that reaches the registry VM as its job template does: the registry credential injected, the
    Machine credential's key in ssh-agent, a pinned host key."""
    daemon, image = engine
    env, extra = registry_credential(registry)
    host = {
        "ansible_host": sshd.host, "ansible_port": sshd.port, "ansible_user": sshd.user,
        "ansible_connection": "ansible.builtin.ssh", "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_common_args": "-o UserKnownHostsFile=/runner/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes",
        "registry_storage_root": str(registry.storage_root),
    }
    return run_job(daemon, image, tmp_path, f"playbooks/{playbook}", controller_inventory(host), {**extra, **extravars},
                   env, ssh_key=sshd.client_key.read_text(encoding="utf-8"),
                   files={"known_hosts": sshd.known_hosts.read_text(encoding="utf-8")})


def assert_no_secret(job: Job, *secret_values: str) -> None:
    """No secret in the job's events, nor anywhere in what the worker sent back but one place: the
    worker's first status message carries its environment (ansible-runner does that under AWX too,
    and AWX keeps it only as the job's environment, hiding what the credential type marks secret; the
    injected names end in PASSWORD or TOKEN, which AWX hides in any environment too)."""
    lines = job.worker_stream.split(b"\n")
    starting = json.loads(lines[0])
    assert starting.get("status") == "starting" and "env" in starting
    rest = b"\n".join([json.dumps({key: value for key, value in starting.items() if key != "env"}).encode(), *lines[1:]])
    for value in secret_values:
        assert value, "no secret to look for"
        assert value.encode() not in rest, "a secret is in the worker's stream outside its environment"
        assert value not in json.dumps(job.events), "a secret is in the job's events"
        assert all(name.endswith(("PASSWORD", "TOKEN")) for name, text in starting["env"].items() if text == value)


def test_verify_job_names_the_broken_image_with_injected_credentials(
    engine: tuple[DockerDaemon, str], registry_basic: RegistryServer, make_pusher: t.Callable[..., ImagePusher],
    tmp_path: pathlib.Path,
) -> None:
    daemon, image = engine
    incident = reproduce_incident(registry_basic, make_pusher(registry_basic))
    env, extra = registry_credential(registry_basic)
    survey = {"registry_images": f"{incident.reference}\n{incident.keep_image.repository}:{incident.keep_image.tag}",
              "registry_blob_check": "read", "verify_fail_when_broken": "true"}
    job = run_job(daemon, image, tmp_path, "playbooks/verify.yml", controller_inventory(), {**survey, **extra}, env)
    assert job.status == "failed", job.explain()
    assert "1 image(s) broken: infra-ci:latest" in job.stdout, job.explain()
    assert_no_secret(job, env["REGISTRY_PASSWORD"])

    healthy = {**survey, "registry_images": f"{incident.keep_image.repository}:{incident.keep_image.tag}"}
    job = run_job(daemon, image, tmp_path, "playbooks/verify.yml", controller_inventory(), {**healthy, **extra}, env)
    assert job.status == "successful", job.explain()


def test_diagnose_job_hands_the_broken_images_to_the_next_node(
    engine: tuple[DockerDaemon, str], registry: RegistryServer, make_pusher: t.Callable[..., ImagePusher],
    sshd_server: SshServer, tmp_path: pathlib.Path,
) -> None:
    incident = reproduce_incident(registry, make_pusher(registry))
    # As the incident workflow's survey gives it: incident_images, one per line, with the registry host.
    survey = {"incident_images": f"{registry.host}/{incident.repository}:{incident.tag}\n",
              "registry_blob_check": "read", "diagnose_scan_storage": "true"}
    job = run_on_the_vm(engine, registry, sshd_server, tmp_path, "diagnose.yml", survey)
    key = sshd_server.client_key.read_text(encoding="utf-8")
    assert job.status == "failed", job.explain()  # run on its own, diagnose fails while an image is broken
    broken = f"{incident.repository}:{incident.tag}"
    assert job.artifacts == {"registry_images": [broken], "registry_verdicts": {
        "ok": [], "broken": [broken], "unverified": [], "not_found": []}}, job.explain()
    assert "Accepted publickey for root" in sshd_server.log()
    assert "orphan" in job.stdout.lower(), job.explain()
    assert_no_secret(job, key.strip().splitlines()[1])


class Workflow(t.NamedTuple):
    ran: list[tuple[str, Job]]

    @property
    def path(self) -> list[tuple[str, str]]:
        return [(node, job.status) for node, job in self.ran]

    def explain(self) -> str:
        return "\n\n".join(f"== {node}: {job.status}\n{job.explain()}" for node, job in self.ran)


def run_incident_workflow(engine: tuple[DockerDaemon, str], tmp_path: pathlib.Path, survey: dict[str, t.Any],
                          credentials: dict[str, tuple[dict[str, str], dict[str, str]]], registry_vm: dict[str, t.Any],
                          ssh_key: str, known_hosts: str, site_vars: dict[str, t.Any]) -> Workflow:
    """The incident workflow as AWX runs it, from playbooks/awx/vars/objects.yml: each node's job in the EE with
    its template's credentials; the next nodes chosen by the job's status (success_nodes, failure_nodes,
    always_nodes); the artifacts of earlier jobs passed on, beneath the workflow's own variables and survey
    answers (AWX's precedence). ``site_vars`` stand for what an admin sets in the templates (awx_*)."""
    daemon, image = engine
    data = objects()
    workflow = data["awx_workflow"]
    templates = {template["name"]: template for template in data["awx_job_templates"]}
    nodes = {node["identifier"]: node for node in workflow["nodes"]}
    targets = {target["identifier"] for node in nodes.values() for group in node.get("related", {}).values()
               for target in group}
    queue = [identifier for identifier in nodes if identifier not in targets]
    artifacts: dict[str, t.Any] = {}
    ran: list[tuple[str, Job]] = []
    while queue:
        identifier = queue.pop(0)
        template = templates[nodes[identifier]["unified_job_template"]["name"]]
        env: dict[str, str] = {}
        injected: dict[str, t.Any] = {}
        for kind in template["credentials"]:
            if kind in credentials:
                env.update(credentials[kind][0])
                injected.update(credentials[kind][1])
        on_the_vm = "machine" in template["credentials"]
        extravars = {**site_vars, **template.get("extra_vars", {}), **injected, **artifacts,
                     **workflow.get("extra_vars", {}), **survey}
        job = run_job(daemon, image, tmp_path / identifier, template["playbook"],
                      controller_inventory(registry_vm if on_the_vm else None), extravars, env,
                      ssh_key=ssh_key if on_the_vm else None, files={"known_hosts": known_hosts} if on_the_vm else None)
        ran.append((identifier, job))
        artifacts.update(job.artifacts or {})
        related = nodes[identifier].get("related", {})
        chosen = related.get("success_nodes" if job.status == "successful" else "failure_nodes", [])
        queue += [target["identifier"] for target in chosen + related.get("always_nodes", [])]
    return Workflow(ran)


@pytest.fixture
def incident_workflow(engine: tuple[DockerDaemon, str], registry_basic: RegistryServer,
                      make_pusher: t.Callable[..., ImagePusher], sshd_server: SshServer, tmp_path: pathlib.Path,
                      ci: CI) -> t.Callable[..., Workflow]:
    """The incident on a registry with basic auth; run(images, registry_url=..., password=...) launches the workflow."""
    reproduce_incident(registry_basic, make_pusher(registry_basic))
    registry_vm = {
        "ansible_host": sshd_server.host, "ansible_port": sshd_server.port, "ansible_user": sshd_server.user,
        "ansible_connection": "ansible.builtin.ssh", "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_common_args": "-o UserKnownHostsFile=/runner/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes",
        "registry_storage_root": str(registry_basic.storage_root),
    }
    site_vars = {"awx_rebuild_pipelines": {"infra-ci": {"repo": "ops/infra-ci", "branch": "main"}},
                 "awx_rebuild_builds": {}, "rebuild_poll_interval": 0.2}

    def run(images: str, registry_url: str = registry_basic.url, password: str = registry_basic.password or "") -> Workflow:
        credentials = {"registry": inject("registry", url=registry_url, username=registry_basic.username or "",
                                          password=password),
                       "woodpecker": inject("woodpecker", server=ci.fake.url, token=ci.token)}
        return run_incident_workflow(engine, tmp_path, {"incident_images": images}, credentials, registry_vm,
                                     sshd_server.client_key.read_text(encoding="utf-8"),
                                     sshd_server.known_hosts.read_text(encoding="utf-8"), site_vars)

    return run


@pytest.mark.parametrize("case", ["registry unreachable", "password rejected", "tag does not exist"])
def test_the_incident_workflow_starts_no_rebuild_for_an_image_it_could_not_call_broken(
    incident_workflow: t.Callable[..., Workflow], registry_basic: RegistryServer, ci: CI, case: str,
) -> None:
    from tests.harness.registry import free_port

    if case == "registry unreachable":
        workflow = incident_workflow("infra-ci:latest", registry_url=f"http://127.0.0.1:{free_port()}")
        says = "Could not verify (fix the registry, the network or the credentials; nothing was rebuilt): infra-ci:latest"
    elif case == "password rejected":
        workflow = incident_workflow("infra-ci:latest", password="not-the-password")
        says = "rejected the credentials"
    else:
        workflow = incident_workflow("infra-ci:no-such-tag")
        says = "Not in the registry (check the names): infra-ci:no-such-tag."
    assert workflow.path == [("diagnose", "failed")], workflow.explain()
    job = workflow.ran[0][1]
    assert says in job.stdout, job.explain()
    assert job.artifacts["registry_images"] == [], job.explain()
    assert not ci.fake.api_requests("POST"), "a pipeline was started for an image that is not broken"


def test_the_incident_workflow_rebuilds_a_real_orphan_index_through_ci(
    incident_workflow: t.Callable[..., Workflow], registry_basic: RegistryServer, ci: CI,
) -> None:
    with PlayedPipeline(ci.fake, ci.repo_id, _ci_push(registry_basic)) as pipeline:
        workflow = incident_workflow("infra-ci:latest\n")
    assert pipeline.error is None, pipeline.error
    assert workflow.path == [("diagnose", "successful"), ("rebuild_ci", "successful"), ("verify", "successful"),
                             ("investigate", "successful")], workflow.explain()
    assert len([r for r in ci.fake.api_requests("POST") if r.path.endswith("/pipelines")]) == 1


def test_rebuild_ci_job_triggers_woodpecker_with_the_injected_token(
    engine: tuple[DockerDaemon, str], registry: RegistryServer, make_pusher: t.Callable[..., ImagePusher],
    tmp_path: pathlib.Path, ci: CI,
) -> None:
    daemon, image = engine
    pusher = make_pusher(registry)
    reproduce_incident(registry, pusher)
    registry_env, extra = registry_credential(registry)
    woodpecker_env, woodpecker_extra = inject("woodpecker", server=ci.fake.url, token=ci.token)
    # What the job template fixes and what the diagnose node's set_stats passes on (a list).
    extravars = {**extra, **woodpecker_extra, "registry_images": ["infra-ci:latest"], "rebuild_action": "trigger",
                 "rebuild_force": "false", "rebuild_poll_interval": 0.2,
                 "rebuild_pipelines": {"infra-ci": {"repo": "ops/infra-ci", "branch": "main"}}}
    with PlayedPipeline(ci.fake, ci.repo_id, _ci_push(registry)) as pipeline:
        job = run_job(daemon, image, tmp_path, "playbooks/rebuild_ci.yml", controller_inventory(), extravars,
                      {**registry_env, **woodpecker_env})
    assert pipeline.error is None, pipeline.error
    assert job.status == "successful", job.explain()
    assert "1 of 1 image(s) verify end to end" in job.stdout, job.explain()
    assert_no_secret(job, ci.token)


def test_rebuild_on_host_job_builds_over_ssh_and_verifies(
    engine: tuple[DockerDaemon, str], registry: RegistryServer, make_pusher: t.Callable[..., ImagePusher],
    sshd_server: SshServer, tmp_path: pathlib.Path,
) -> None:
    reproduce_incident(registry, make_pusher(registry))
    source = make_source_repo(tmp_path / "source" / "infra-ci")
    extravars = {"registry_images": "infra-ci:latest", "rebuild_only_broken": "true",
                 "rebuild_workdir": str(tmp_path / "vm-work"),
                 "rebuild_builds": {"infra-ci:latest": {"source": str(source), "version": "main", "command": "sh build.sh",
                                                        "environment": {"BUILD_LOG": str(tmp_path / "build.log")}}}}
    job = run_on_the_vm(engine, registry, sshd_server, tmp_path, "rebuild_on_host.yml", extravars)
    assert job.status == "successful", job.explain()
    assert "1 of 1 rebuilt image(s) verify end to end" in job.stdout, job.explain()
    assert (tmp_path / "build.log").exists()


def test_investigate_job_lists_the_broken_tags_and_passes_them_on(
    engine: tuple[DockerDaemon, str], registry: RegistryServer, make_pusher: t.Callable[..., ImagePusher],
    sshd_server: SshServer, tmp_path: pathlib.Path,
) -> None:
    incident = reproduce_incident(registry, make_pusher(registry))
    extravars = {"investigate_scan_storage": "true", "registry_blob_check": "head",
                 "rebuild_pipelines": {"infra-ci": {"repo": "ops/infra-ci"}}}
    job = run_on_the_vm(engine, registry, sshd_server, tmp_path, "investigate.yml", extravars)
    assert job.status == "failed", job.explain()
    broken = f"{incident.repository}:{incident.tag}"
    assert job.artifacts["registry_images"] == [broken], job.explain()
    assert job.artifacts["registry_verdicts"]["broken"] == [broken] and not job.artifacts["registry_verdicts"]["unverified"]
    assert f"{broken} -> rerun ops/infra-ci" in job.stdout, job.explain()


def test_the_probe_job_pushes_its_metrics_to_the_pushgateway(
    engine: tuple[DockerDaemon, str], registry: RegistryServer, make_pusher: t.Callable[..., ImagePusher],
    tmp_path: pathlib.Path,
) -> None:
    daemon, image = engine
    reproduce_incident(registry, make_pusher(registry))
    pushgateway = start_pushgateway(tmp_path)
    try:
        env, extra = registry_credential(registry)
        probe = next(template for template in objects()["awx_job_templates"] if template["name"] == "selfhosted.registry probe")
        extravars = {**extra, **probe["extra_vars"], "verify_pushgateway_url": pushgateway.url}
        job = run_job(daemon, image, tmp_path, probe["playbook"], controller_inventory(), extravars, env)
        assert job.status == "failed", job.explain()  # the scheduled job goes red while a tag is broken
        broken = samples(pushgateway, "registry_verify_image_broken")
    finally:
        pushgateway.stop()
    assert broken == {frozenset({("job", "selfhosted_registry_probe"), ("registry", registry.host),
                                 ("repository", "infra-ci"), ("tag", "latest")}): 1.0}
