# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The documented Woodpecker verify-integrity step, run command for command against the real registry.

The step's YAML is read from docs/woodpecker/verify-integrity.yml; Woodpecker's own substitution is
applied (``${CI_...}`` from the pipeline, ``$$`` escaping to ``$``), and each command runs under
``sh -e`` as Woodpecker runs it, in a fresh virtual environment that holds only what the step installs,
with the step's environment and secrets as Woodpecker would inject them. The only difference from a
real pipeline: Python 3.11 here instead of the step's python:3.12-slim image (no image can be pulled),
and SELFHOSTED_REGISTRY_COLLECTION names the collection built from this checkout (Galaxy is unreachable).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import typing as t

import pytest
import yaml

from tests.harness.images import ImagePusher
from tests.harness.incident import reproduce_incident
from tests.harness.registry import RegistryServer

TOP = pathlib.Path(__file__).resolve().parents[2]
STEP_FILE = TOP / "docs" / "woodpecker" / "verify-integrity.yml"
PIP_CACHE = TOP / ".cache" / "pip-ci-step"  # kept between runs: the step's pip install is a download otherwise
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
    """The step as documented, in a workspace whose only Python packages are the ones the step installs."""

    def __init__(self, workdir: pathlib.Path, collection: pathlib.Path) -> None:
        document = yaml.safe_load(STEP_FILE.read_text())
        (self.step,) = document["steps"]
        self.workdir = workdir
        self.collection = collection
        venv = workdir / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        self.base_env = {
            "PATH": f"{venv}/bin:/usr/bin:/bin",
            "HOME": str(workdir / "home"),
            "PIP_CACHE_DIR": str(PIP_CACHE),
            "LC_ALL": "C.UTF-8",
            "SELFHOSTED_REGISTRY_COLLECTION": str(collection),
        }

    def run(self, registry: RegistryServer, secrets: t.Mapping[str, str]) -> StepRun:
        pipeline = {"CI_COMMIT_SHA": COMMIT}
        env = dict(self.base_env)
        for name, value in self.step["environment"].items():
            if isinstance(value, dict):
                env[name] = secrets[value["from_secret"]]
            else:
                env[name] = woodpecker_substitute(str(value), pipeline)
        env["REGISTRY_URL"] = registry.url  # the one value a user edits: where their registry is
        output = []
        for command in self.step["commands"]:
            result = subprocess.run(["sh", "-e", "-c", woodpecker_substitute(command, pipeline)], env=env,
                                    cwd=self.workdir, capture_output=True, text=True, timeout=900, check=False)
            output.append(result.stdout + result.stderr)
            if result.returncode != 0:
                return StepRun(result.returncode, "".join(output))
        return StepRun(0, "".join(output))


@pytest.fixture(scope="module")
def verify_step(tmp_path_factory: pytest.TempPathFactory) -> VerifyStep:
    workdir = tmp_path_factory.mktemp("ci-step")
    built = subprocess.run(
        [str(TOP / ".venv" / "bin" / "ansible-galaxy"), "collection", "build", str(TOP), "--output-path",
         str(workdir / "dist")], capture_output=True, text=True, check=False,
        env={**os.environ, "ANSIBLE_HOME": str(workdir / "ansible-home")})
    assert built.returncode == 0, built.stdout + built.stderr
    (tarball,) = (workdir / "dist").glob("selfhosted-registry-*.tar.gz")
    return VerifyStep(workdir, tarball)


def reader_secrets(registry: RegistryServer) -> dict[str, str]:
    return {"registry_reader_username": registry.readonly_username or "",
            "registry_reader_password": registry.readonly_password or ""}


def test_the_step_passes_on_a_healthy_push(
    verify_step: VerifyStep, registry_basic: RegistryServer, make_pusher: t.Callable[..., ImagePusher]
) -> None:
    pusher = make_pusher(registry_basic)
    for tag in (COMMIT, "latest"):
        pusher.push_index("infra-ci", tag, platforms=("linux/amd64", "linux/arm64"), attestations=True)
    run = verify_step.run(registry_basic, reader_secrets(registry_basic))
    assert run.returncode == 0, run.output
    assert "2 image(s) checked, 0 broken, 0 not verified" in run.output
    assert (registry_basic.readonly_password or "") not in run.output


def test_the_step_fails_naming_the_missing_child_of_a_broken_push(
    verify_step: VerifyStep, registry_basic: RegistryServer, make_pusher: t.Callable[..., ImagePusher]
) -> None:
    pusher = make_pusher(registry_basic)
    pusher.push_image("infra-ci", "latest")
    incident = reproduce_incident(registry_basic, pusher, tag=COMMIT)
    run = verify_step.run(registry_basic, reader_secrets(registry_basic))
    assert run.returncode != 0, run.output
    assert "2 image(s) checked, 1 broken" in run.output
    assert any(f"1 image(s) broken: infra-ci:{COMMIT}: child manifest {digest} answered 404 MANIFEST_UNKNOWN."
               in run.output for digest in incident.missing_manifests), run.output
    assert (registry_basic.readonly_password or "") not in run.output


def test_the_step_fails_as_unverified_when_the_registry_rejects_the_reader(
    verify_step: VerifyStep, registry_basic: RegistryServer, make_pusher: t.Callable[..., ImagePusher]
) -> None:
    make_pusher(registry_basic).push_image("infra-ci", "latest")
    wrong = {"registry_reader_username": registry_basic.readonly_username or "",
             "registry_reader_password": "not-the-password"}
    run = verify_step.run(registry_basic, wrong)
    assert run.returncode != 0, run.output
    assert f"Registry {registry_basic.host} rejected the credentials" in run.output
    walked = run.output.split("TASK [Walk")[-1]
    assert '"broken": []' in walked and "is broken" not in walked and "are broken" not in walked, walked
    assert '"unverified": ["infra-ci:' in walked, walked
