# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The documented Woodpecker verify-integrity step, run command for command in its image against the real registry.

The step's YAML is read from docs/woodpecker/verify-integrity.yml; Woodpecker's own substitution is
applied (``${CI_...}`` from the pipeline, ``$$`` escaping to ``$``), and each command runs under
``sh -e`` in the step's image with the step's environment and secrets as Woodpecker injects them, on a
registry with htpasswd auth behind TLS. The only difference from a real pipeline: the image is the EE
built from this checkout on the tests' own engine (the step names the copy a user pushes to their registry).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import typing as t

import pytest
import yaml

from tests.harness.awx_docker import DockerDaemon
from tests.harness.images import ImagePusher
from tests.harness.incident import reproduce_incident
from tests.harness.registry import BASIC_TLS, RegistryServer

pytestmark = pytest.mark.slow
TOP = pathlib.Path(__file__).resolve().parents[2]
STEP_FILE = TOP / "docs" / "woodpecker" / "verify-integrity.yml"
COMMIT = "4f9c2b7e"


def woodpecker_substitute(text: str, pipeline: t.Mapping[str, str]) -> str:
    """Woodpecker's pass over the config: ``${NAME}`` from the pipeline's variables, ``$$`` becomes ``$``."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return pipeline[match.group(1)]  # a KeyError here means the step uses a variable Woodpecker lacks
    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}", replace, text)


class StepRun(t.NamedTuple):
    returncode: int
    output: str


class VerifyStep:
    """The step as documented, each command in a fresh container of its image, the workspace mounted."""

    def __init__(self, engine: tuple[DockerDaemon, str], workdir: pathlib.Path) -> None:
        document = yaml.safe_load(STEP_FILE.read_text())
        (self.step,) = document["steps"]
        self.daemon, self.image = engine
        self.workdir = workdir

    def run(self, registry: RegistryServer, secrets: t.Mapping[str, str]) -> StepRun:
        pipeline = {"CI_COMMIT_SHA": COMMIT}
        env: dict[str, str] = {}
        for name, value in self.step["environment"].items():
            if isinstance(value, dict):
                env[name] = secrets[value["from_secret"]]
            else:
                env[name] = woodpecker_substitute(str(value), pipeline)
        env["REGISTRY_URL"] = registry.url  # the values a user edits: where their registry is, and its CA
        workspace = self.workdir / "workspace"
        workspace.mkdir(exist_ok=True)
        (workspace / "registry-ca.crt").write_bytes(pathlib.Path(t.cast(str, registry.ca_path)).read_bytes())
        env["REGISTRY_CA_PATH"] = "/woodpecker/src/registry-ca.crt"
        output = []
        for command in self.step["commands"]:
            # Values reach the container through docker's environment (-e NAME), never its command line.
            argv = ["docker", "run", "--rm", "--network", "host", "-v", f"{workspace}:/woodpecker/src",
                    "-w", "/woodpecker/src", *[arg for name in env for arg in ("-e", name)], self.image,
                    "sh", "-e", "-c", woodpecker_substitute(command, pipeline)]
            result = subprocess.run(argv, env={**os.environ, **self.daemon.env, **env}, capture_output=True,
                                    text=True, timeout=900, check=False)
            output.append(result.stdout + result.stderr)
            if result.returncode != 0:
                return StepRun(result.returncode, "".join(output))
        return StepRun(0, "".join(output))


@pytest.fixture
def verify_step(engine: tuple[DockerDaemon, str], tmp_path: pathlib.Path) -> VerifyStep:
    return VerifyStep(engine, tmp_path)


@pytest.fixture
def registry_basic_tls(make_registry: t.Callable[..., RegistryServer]) -> RegistryServer:
    return make_registry(BASIC_TLS)


def test_the_step_pins_its_image_and_installs_nothing() -> None:
    (step,) = yaml.safe_load(STEP_FILE.read_text())["steps"]
    assert re.fullmatch(r"[\w.:/-]+/selfhosted-registry-ee:\d+\.\d+\.\d+", step["image"]), step["image"]
    commands = " ".join(step["commands"])
    assert not re.search(r"pip install|ansible-galaxy|apt-get|curl|wget", commands), commands


def reader_secrets(registry: RegistryServer) -> dict[str, str]:
    return {"registry_reader_username": registry.readonly_username or "",
            "registry_reader_password": registry.readonly_password or ""}


def test_the_step_passes_on_a_healthy_push(
    verify_step: VerifyStep, registry_basic_tls: RegistryServer, make_pusher: t.Callable[..., ImagePusher]
) -> None:
    pusher = make_pusher(registry_basic_tls)
    for tag in (COMMIT, "latest"):
        pusher.push_index("infra-ci", tag, platforms=("linux/amd64", "linux/arm64"), attestations=True)
    run = verify_step.run(registry_basic_tls, reader_secrets(registry_basic_tls))
    assert run.returncode == 0, run.output
    assert "2 image(s) checked, 0 broken, 0 not verified" in run.output
    assert (registry_basic_tls.readonly_password or "") not in run.output


def test_the_step_fails_naming_the_missing_child_of_a_broken_push(
    verify_step: VerifyStep, registry_basic_tls: RegistryServer, make_pusher: t.Callable[..., ImagePusher]
) -> None:
    pusher = make_pusher(registry_basic_tls)
    pusher.push_image("infra-ci", "latest")
    incident = reproduce_incident(registry_basic_tls, pusher, tag=COMMIT)
    run = verify_step.run(registry_basic_tls, reader_secrets(registry_basic_tls))
    assert run.returncode != 0, run.output
    assert "2 image(s) checked, 1 broken" in run.output
    assert any(f"1 image(s) broken: infra-ci:{COMMIT}: child manifest {digest} answered 404 MANIFEST_UNKNOWN."
               in run.output for digest in incident.missing_manifests), run.output
    assert (registry_basic_tls.readonly_password or "") not in run.output


def test_the_step_fails_as_unverified_when_the_registry_rejects_the_reader(
    verify_step: VerifyStep, registry_basic_tls: RegistryServer, make_pusher: t.Callable[..., ImagePusher]
) -> None:
    make_pusher(registry_basic_tls).push_image("infra-ci", "latest")
    wrong = {"registry_reader_username": registry_basic_tls.readonly_username or "",
             "registry_reader_password": "not-the-password"}
    run = verify_step.run(registry_basic_tls, wrong)
    assert run.returncode != 0, run.output
    assert f"Registry {registry_basic_tls.host} rejected the credentials" in run.output
    walked = run.output.split("TASK [Walk")[-1]
    assert '"broken": []' in walked and "is broken" not in walked and "are broken" not in walked, walked
    assert '"unverified": ["infra-ci:' in walked, walked


# ---- the Kubernetes CronJob ---------------------------------------------------------------------

MANIFESTS = TOP / "docs" / "kubernetes" / "registry-probe"
# The oldest Kubernetes release still in support when this was written, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")


def manifests() -> dict[str, dict[str, t.Any]]:
    """The documented manifests by kind (one per file: kubectl apply -f the directory)."""
    documents = [yaml.safe_load(path.read_text()) for path in sorted(MANIFESTS.glob("*.yml"))]
    return {document["kind"]: document for document in documents}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_kubernetes_manifests_validate_against_the_kubernetes_schema(version: str) -> None:
    import kubernetes_validate

    documents = manifests()
    assert sorted(documents) == ["ConfigMap", "CronJob", "Secret"]
    for document in documents.values():
        kubernetes_validate.validate(document, version, strict=True)  # raises naming the field that is wrong
    cronjob = documents["CronJob"]
    broken = dict(cronjob, spec=dict(cronjob["spec"], schedule=15))
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


class Container(t.NamedTuple):
    spec: dict[str, t.Any]
    pod: dict[str, t.Any]


def cronjob_container() -> Container:
    cronjob = manifests()["CronJob"]
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return Container(container, pod)


def run_cronjob_container(engine: tuple[DockerDaemon, str], registry: RegistryServer, password: str,
                          pushgateway_url: str, workdir: pathlib.Path) -> subprocess.CompletedProcess[str]:
    """The CronJob's container as the kubelet starts it: its command, its args with $(VAR) expanded from its
    env, the Secret's keys as environment, the ConfigMap's CA and an empty /work mounted, its user, a
    read-only root. What a user edits is set to this test's registry and Pushgateway."""
    daemon, image = engine
    container = cronjob_container()
    env: dict[str, str] = {}
    for variable in container.spec["env"]:
        if "value" in variable:
            env[variable["name"]] = variable["value"]
    env["REGISTRY_URL"] = registry.url
    env["REGISTRY_USERNAME"] = registry.readonly_username or ""
    env["REGISTRY_PASSWORD"] = password
    args = [re.sub(r"\$\((\w+)\)", lambda match: env[match.group(1)], arg) for arg in container.spec["args"]]
    args = [f"--pushgateway-url={pushgateway_url}" if arg.startswith("--pushgateway-url=") else arg for arg in args]
    mounts = {mount["name"]: mount["mountPath"] for mount in container.spec["volumeMounts"]}
    ca = workdir / "ca"
    ca.mkdir(parents=True, exist_ok=True)
    (ca / "ca.crt").write_bytes(pathlib.Path(t.cast(str, registry.ca_path)).read_bytes())
    user = container.pod["securityContext"]
    argv = ["docker", "run", "--rm", "--network", "host", "--read-only", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--user", f"{user['runAsUser']}:{user['runAsGroup']}",
            "-v", f"{ca}:{mounts['ca']}:ro", "--tmpfs", f"{mounts['work']}:uid={user['runAsUser']}",
            *[arg for name in env for arg in ("-e", name)],
            "--entrypoint", container.spec["command"][0], image, *container.spec["command"][1:], *args]
    return subprocess.run(argv, env={**os.environ, **daemon.env, **env}, capture_output=True, text=True,
                          timeout=600, check=False)


def test_the_cronjob_container_probes_a_tls_registry_with_auth_and_carries_its_state(
    engine: tuple[DockerDaemon, str], registry_basic_tls: RegistryServer, make_pusher: t.Callable[..., ImagePusher],
    tmp_path: pathlib.Path,
) -> None:
    from tests.harness.pushgateway import samples, start_pushgateway

    reproduce_incident(registry_basic_tls, make_pusher(registry_basic_tls))
    pushgateway = start_pushgateway(tmp_path)
    try:
        group = {("job", "selfhosted_registry_probe"), ("registry", registry_basic_tls.host)}
        image = frozenset(group | {("repository", "infra-ci"), ("tag", "latest")})
        found = run_cronjob_container(engine, registry_basic_tls, registry_basic_tls.readonly_password or "",
                                      pushgateway.url, tmp_path / "run-1")
        assert found.returncode == 1, found.stdout + found.stderr  # an image is broken
        assert "BROKEN image=infra-ci:latest" in found.stdout, found.stdout + found.stderr
        assert samples(pushgateway, "registry_verify_image_broken") == {image: 1.0}
        assert samples(pushgateway, "registry_verify_interval_seconds") == {frozenset(group): 900.0}

        # The credentials are rotated and the Secret not yet: a fresh container, which knows only the push.
        for failed_runs in (1, 2):
            rejected = run_cronjob_container(engine, registry_basic_tls, "rotated", pushgateway.url,
                                             tmp_path / f"run-{failed_runs + 1}")
            assert rejected.returncode == 2, rejected.stdout + rejected.stderr
            assert "rejected the credentials" in rejected.stderr + rejected.stdout
            assert samples(pushgateway, "registry_verify_failed_runs") == {frozenset(group): float(failed_runs)}
            assert samples(pushgateway, "registry_verify_image_broken_carried") == {image: 1.0}
        assert (registry_basic_tls.readonly_password or "") not in found.stdout + found.stderr
    finally:
        pushgateway.stop()
