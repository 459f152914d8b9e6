# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""rebuild_on_host.yml through a real sshd: the incident is reproduced on the real registry, the
playbook checks out a real git repository on the "VM" (this machine, reached over SSH), runs its build
script, which builds a two-platform OCI image and pushes it with skopeo, then verifies it end to end.
"""

from __future__ import annotations

import pathlib
import secrets
import subprocess
import textwrap

import pytest

from tests.harness.images import ImagePusher
from tests.harness.incident import reproduce_incident
from tests.harness.registry import RegistryServer, free_port
from tests.harness.sshd import SshServer
from tests.integration.conftest import CI
from tests.integration.test_playbooks_support import (
    run_playbook,
    write_inventory,
)

# Writes an OCI image layout with an index of two platform images whose layer holds this checkout's
# app.txt: a real build product that skopeo can push, made with the standard library only.
MAKE_LAYOUT = textwrap.dedent(
    '''\
    import gzip, hashlib, io, json, os, sys, tarfile

    layout, tag = sys.argv[1], sys.argv[2]
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs)

    def put(data):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as handle:
            handle.write(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    def canonical(document):
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    app = open("app.txt", "rb").read()
    manifests = []
    for os_name, arch in (("linux", "amd64"), ("linux", "arm64")):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            body = app + ("built for %s/%s\\n" % (os_name, arch)).encode()
            info = tarfile.TarInfo("app/app.txt")
            info.size, info.mtime = len(body), 0
            tar.addfile(info, io.BytesIO(body))
        diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
        layer = put(gzip.compress(raw.getvalue(), mtime=0))
        config = put(canonical({"architecture": arch, "os": os_name,
                                "rootfs": {"type": "layers", "diff_ids": [diff_id]}, "config": {}}))
        manifest = canonical({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": dict(config, mediaType="application/vnd.oci.image.config.v1+json"),
            "layers": [dict(layer, mediaType="application/vnd.oci.image.layer.v1.tar+gzip")],
        })
        manifests.append(dict(put(manifest), mediaType="application/vnd.oci.image.manifest.v1+json",
                              platform={"os": os_name, "architecture": arch}))
    index = put(canonical({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                           "manifests": manifests}))
    with open(os.path.join(layout, "oci-layout"), "w") as handle:
        json.dump({"imageLayoutVersion": "1.0.0"}, handle)
    with open(os.path.join(layout, "index.json"), "w") as handle:
        json.dump({"schemaVersion": 2, "manifests": [dict(index, mediaType="application/vnd.oci.image.index.v1+json",
                   annotations={"org.opencontainers.image.ref.name": tag})]}, handle)
    '''
)

BUILD_SH = textwrap.dedent(
    """\
    #!/bin/sh
    # Build this checkout into an OCI layout, then push every platform with skopeo.
    set -eu
    rm -rf .layout
    python3 make_layout.py .layout "$TAG"
    skopeo copy --all --dest-tls-verify=false "oci:.layout:$TAG" "docker://$IMAGE_REF"
    echo "built $IMAGE_REF from $SOURCE_REF in $SOURCE_DIR" >> "$BUILD_LOG"
    """
)


def _git(repo: pathlib.Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=ops", "-c", "user.email=ops@example.invalid", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip()


def make_source_repo(path: pathlib.Path, content: str = "infra-ci tools\n") -> pathlib.Path:
    path.mkdir(parents=True)
    _git(path, "init", "-q", "-b", "main")
    (path / "app.txt").write_text(content, encoding="utf-8")
    (path / "make_layout.py").write_text(MAKE_LAYOUT, encoding="utf-8")
    (path / "build.sh").write_text(BUILD_SH, encoding="utf-8")
    _git(path, "add", "app.txt", "make_layout.py", "build.sh")
    _git(path, "commit", "-q", "-m", "infra-ci image")
    return path


def _pullable(pusher: ImagePusher, repository: str, tag: str) -> bool:
    """Checked without the collection: the tag, every child manifest and every blob answer 200."""
    response = pusher.get_manifest(repository, tag)
    if response.status_code != 200:
        return False
    index = response.json()
    for child in index.get("manifests", []):
        child_response = pusher.get_manifest(repository, child["digest"])
        if child_response.status_code != 200:
            return False
        manifest = child_response.json()
        for blob in [manifest["config"], *manifest["layers"]]:
            if not pusher.blob_exists(repository, blob["digest"]):
                return False
    return True


def _setup(tmp_path: pathlib.Path, registry: RegistryServer, sshd_server: SshServer) -> tuple[pathlib.Path, dict]:
    source = make_source_repo(tmp_path / "source" / "infra-ci")
    inventory = write_inventory(tmp_path / "inventory.yml", registry_vm=sshd_server.inventory_vars())
    extra_vars = {
        "registry_url": registry.url,
        "registry_images": "infra-ci:latest",
        "rebuild_workdir": str(tmp_path / "vm-work"),
        "rebuild_builds": {
            "infra-ci:latest": {
                "source": str(source),
                "version": "main",
                "command": "sh build.sh",
                "environment": {"BUILD_LOG": str(tmp_path / "build.log")},
            }
        },
    }
    return inventory, extra_vars


def test_rebuild_on_host_rebuilds_the_broken_image_over_ssh_and_verifies_it(
    tmp_path: pathlib.Path, registry: RegistryServer, make_pusher, sshd_server: SshServer
) -> None:
    pusher = make_pusher(registry)
    incident = reproduce_incident(registry, pusher)
    assert not _pullable(pusher, incident.repository, incident.tag)
    inventory, extra_vars = _setup(tmp_path, registry, sshd_server)

    run = run_playbook("rebuild_on_host.yml", inventory, extra_vars, tmp_path / "run1")

    assert run.returncode == 0, run.explain()
    assert "1 of 1 rebuilt image(s) verify end to end" in run.stdout, run.explain()
    assert run.recap("registry-vm")["changed"] >= 2, run.explain()  # checkout + build
    # The build really ran on the "VM" through sshd, from the checkout at the given ref.
    assert "Accepted publickey for root" in sshd_server.log()
    build_log = (tmp_path / "build.log").read_text(encoding="utf-8")
    assert f"built {registry.host}/infra-ci:latest from main in {tmp_path / 'vm-work' / 'src' / 'infra-ci_latest'}" in build_log
    # And the registry agrees without the collection's help.
    assert _pullable(pusher, "infra-ci", "latest")

    # A second run finds the image healthy and changes nothing on the VM.
    again = run_playbook("rebuild_on_host.yml", inventory, extra_vars, tmp_path / "run2")
    assert again.returncode == 0, again.explain()
    assert "already healthy, skipped: infra-ci:latest" in again.stdout, again.explain()
    assert "nothing was rebuilt" in again.stdout, again.explain()
    assert again.recap("registry-vm")["changed"] == 0, again.explain()
    assert build_log == (tmp_path / "build.log").read_text(encoding="utf-8")


def test_rebuild_on_host_check_mode_shows_the_plan_and_runs_nothing(
    tmp_path: pathlib.Path, registry: RegistryServer, make_pusher, sshd_server: SshServer
) -> None:
    pusher = make_pusher(registry)
    incident = reproduce_incident(registry, pusher)
    inventory, extra_vars = _setup(tmp_path, registry, sshd_server)

    run = run_playbook("rebuild_on_host.yml", inventory, extra_vars, tmp_path / "run", check=True)

    assert run.returncode == 0, run.explain()
    assert "rebuild on registry_vm: infra-ci:latest" in run.stdout, run.explain()
    assert "infra-ci:latest: in " in run.stdout and "run `sh build.sh`" in run.stdout, run.explain()
    assert f"IMAGE_REF={registry.host}/infra-ci:latest" in run.stdout, run.explain()
    assert not (tmp_path / "build.log").exists()
    assert not (tmp_path / "vm-work" / "src").exists()
    assert not _pullable(pusher, incident.repository, incident.tag)


def test_rebuild_on_host_pushes_with_credentials_that_never_show(
    tmp_path: pathlib.Path, registry_basic: RegistryServer, make_pusher, sshd_server: SshServer
) -> None:
    pusher = make_pusher(registry_basic)
    reproduce_incident(registry_basic, pusher)
    inventory, extra_vars = _setup(tmp_path, registry_basic, sshd_server)
    secret_env = {"REGISTRY_USERNAME": registry_basic.username, "REGISTRY_PASSWORD": registry_basic.password}

    # -vvv shows module arguments, task results and every remote command line: the password is in none.
    run = run_playbook("rebuild_on_host.yml", inventory, extra_vars, tmp_path / "run", env=secret_env,
                       extra_args=["-vvv"])

    assert run.returncode == 0, run.explain()
    assert "1 of 1 rebuilt image(s) verify end to end" in run.stdout, run.explain()
    assert registry_basic.password not in run.output
    assert not (tmp_path / "vm-work" / ".auth").exists(), "the auth file must be removed after the build"
    assert _pullable(pusher, "infra-ci", "latest")


def test_rebuild_on_host_refuses_an_image_without_a_build(
    tmp_path: pathlib.Path, registry: RegistryServer, sshd_server: SshServer
) -> None:
    inventory, extra_vars = _setup(tmp_path, registry, sshd_server)
    extra_vars["registry_images"] = ["infra-ci:latest", "base/python:3.12"]

    run = run_playbook("rebuild_on_host.yml", inventory, extra_vars, tmp_path / "run")

    assert run.returncode != 0
    assert "No build given in rebuild_builds for: base/python:3.12." in run.stdout, run.explain()
    assert "Traceback" not in run.output


def test_rebuild_on_host_reports_a_failing_build_and_the_image_still_broken(
    tmp_path: pathlib.Path, registry: RegistryServer, make_pusher, sshd_server: SshServer
) -> None:
    pusher = make_pusher(registry)
    incident = reproduce_incident(registry, pusher)
    inventory, extra_vars = _setup(tmp_path, registry, sshd_server)
    extra_vars["rebuild_builds"]["infra-ci:latest"]["command"] = "echo 'build: no space left on device' >&2; exit 3"

    run = run_playbook("rebuild_on_host.yml", inventory, extra_vars, tmp_path / "run")

    assert run.returncode != 0
    assert "build: no space left on device" in run.stdout, run.explain()
    assert "0 of 1 rebuilt image(s) verify end to end" in run.stdout, run.explain()
    assert 'registry-vm: "Build and push each image" failed for infra-ci:latest.' in run.stdout, run.explain()
    assert "Still broken after the rebuild: infra-ci:latest." in run.stdout, run.explain()
    assert incident.missing_manifests[0] in run.stdout
    assert "Traceback" not in run.output


@pytest.mark.parametrize("verbosity", ["-v", "-vvv"])
def test_rebuild_on_host_never_prints_a_token_inside_a_source_url(
    tmp_path: pathlib.Path, registry: RegistryServer, make_pusher, sshd_server: SshServer, verbosity: str
) -> None:
    pusher = make_pusher(registry)
    reproduce_incident(registry, pusher)
    inventory, extra_vars = _setup(tmp_path, registry, sshd_server)
    token = "glpat-" + secrets.token_hex(12)
    # A forge address that refuses the connection: the checkout fails, and its failure is reported.
    url = f"https://ci-bot:{token}@127.0.0.1:{free_port()}/infra/ci-image.git"
    extra_vars["rebuild_builds"]["infra-ci:latest"]["source"] = url

    run = run_playbook("rebuild_on_host.yml", inventory, extra_vars, tmp_path / "run", extra_args=[verbosity])

    assert run.returncode != 0
    assert token not in run.output, run.explain()
    assert "registry-vm: \"Check out each image's source\" failed for infra-ci:latest." in run.stdout, run.explain()
    assert "Still broken after the rebuild: infra-ci:latest." in run.stdout, run.explain()


def test_rebuild_on_host_re_runs_the_failed_consumer_pipelines_and_names_those_it_could_not(
    tmp_path: pathlib.Path, registry: RegistryServer, make_pusher, sshd_server: SshServer, ci: CI
) -> None:
    reproduce_incident(registry, make_pusher(registry))
    inventory, extra_vars = _setup(tmp_path, registry, sshd_server)
    fake, unused_repo_id, token = ci
    app_repo = fake.add_repo("team", "app", push=[token])
    app_failed = fake.add_pipeline(app_repo, status="failure")
    extra_vars.update(woodpecker_url=fake.url, rebuild_rerun_pipelines=[
        {"repo": "team/app", "pipeline": app_failed}, {"repo": "team/gone", "pipeline": 7}])

    run = run_playbook("rebuild_on_host.yml", inventory, extra_vars, tmp_path / "run",
                       env={"WOODPECKER_TOKEN": token})

    assert run.returncode == 0, run.explain()  # the images are back; a re-run that failed is reported
    assert "1 of 1 rebuilt image(s) verify end to end" in run.stdout, run.explain()
    assert [r.path for r in fake.api_requests("POST")] == [f"/api/repos/{app_repo}/pipelines/{app_failed}"]
    assert f"re-run: Restarted team/app#{app_failed} as Woodpecker pipeline team/app#{app_failed + 1}" in run.stdout
    assert "next: re-run these by hand once Woodpecker answers: " in run.stdout and "team/gone" in run.stdout, \
        run.explain()
    assert token not in run.output
