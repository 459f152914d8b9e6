# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The harness proves itself: real registries in four auth modes, real pushes, the real incident."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest
import requests

from tests.harness.images import (
    ACCEPT_ALL,
    ACCEPT_DOCKER_ONLY,
    DOCKER_LIST,
    OCI_FOREIGN_LAYER,
    OCI_INDEX,
    ImagePusher,
    PushError,
    make_layer,
)
from tests.harness.incident import IncidentNotReproduced, reproduce_incident
from tests.harness.registry import RegistryStartError, start_registry
from tests.harness.token_issuer import TokenIssuer


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# -- each auth mode serves /v2/ ----------------------------------------------------------------


def test_v2_answers_with_its_auth(any_registry, make_pusher):
    bare = requests.get(f"{any_registry.url}/v2/", verify=any_registry.verify, timeout=10)
    if any_registry.auth in ("anonymous", "tls"):
        assert bare.status_code == 200
    else:
        assert bare.status_code == 401
        scheme = "Basic" if any_registry.auth == "basic" else "Bearer"
        assert bare.headers["WWW-Authenticate"].startswith(scheme + " ")
    # The pusher authenticates in every mode and can push and read back.
    pusher = make_pusher(any_registry)
    assert pusher.request("GET", "/v2/").status_code == 200
    image = pusher.push_image("team/app/api", "v1", seed=any_registry.auth)
    fetched = pusher.get_manifest("team/app/api", "v1")
    assert fetched.status_code == 200
    assert fetched.content == image.manifest_bytes
    assert "team/app/api" in pusher.catalog()


def test_basic_auth_refuses_a_wrong_password(registry_basic, make_pusher):
    good = requests.get(
        f"{registry_basic.url}/v2/", auth=(registry_basic.username, registry_basic.password), timeout=10
    )
    wrong = requests.get(f"{registry_basic.url}/v2/", auth=(registry_basic.username, "wrong"), timeout=10)
    assert (good.status_code, wrong.status_code) == (200, 401)
    htpasswd = (registry_basic.workdir / "htpasswd").read_text()
    assert f"{registry_basic.username}:$2y$" in htpasswd  # bcrypt, the only kind 2.8 accepts


def test_tls_verifies_with_the_test_ca_only(registry_tls):
    assert registry_tls.url.startswith("https://127.0.0.1:")
    assert requests.get(f"{registry_tls.url}/v2/", verify=str(registry_tls.ca_path), timeout=10).status_code == 200
    by_name = f"https://localhost:{registry_tls.port}/v2/"
    assert requests.get(by_name, verify=str(registry_tls.ca_path), timeout=10).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{registry_tls.url}/v2/", verify="/etc/ssl/certs/ca-certificates.crt", timeout=10)


# -- token issuer ----------------------------------------------------------------------------


def test_token_issuer_refuses_a_wrong_password(registry_token):
    issuer = registry_token.token_issuer
    params = {"service": issuer.service, "scope": "repository:infra-ci:pull"}
    wrong = requests.get(issuer.realm, params=params, auth=(registry_token.username, "wrong"), timeout=10)
    missing = requests.get(issuer.realm, params=params, timeout=10)
    assert (wrong.status_code, missing.status_code) == (401, 401)
    assert "token" not in wrong.text
    statuses = [(r.username, r.status) for r in issuer.requests]
    assert statuses == [(registry_token.username, 401), (None, 401)]
    assert all("wrong" not in repr(r) for r in issuer.requests)


def test_token_issuer_limits_the_readonly_user_to_pull(registry_token, make_pusher):
    issuer = registry_token.token_issuer
    scopes = ["repository:infra-ci:pull,push,delete", "registry:catalog:*"]
    answers = {}
    for user, password in (
        (registry_token.username, registry_token.password),
        (registry_token.readonly_username, registry_token.readonly_password),
    ):
        response = requests.get(
            issuer.realm, params={"service": issuer.service, "scope": scopes}, auth=(user, password), timeout=10
        )
        assert response.status_code == 200
        body = response.json()
        assert body["token"] == body["access_token"] and body["expires_in"] > 0 and body["issued_at"]
        answers[user] = _claims(body["token"])["access"]
    assert answers[registry_token.username] == [
        {"type": "repository", "name": "infra-ci", "actions": ["pull", "push", "delete"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]
    assert answers[registry_token.readonly_username] == [
        {"type": "repository", "name": "infra-ci", "actions": ["pull"]}
    ]

    # The registry enforces it: the reader can pull what the writer pushed, and cannot push.
    writer = make_pusher(registry_token)
    image = writer.push_image("infra-ci", "v1")
    reader = make_pusher(
        registry_token, username=registry_token.readonly_username, password=registry_token.readonly_password
    )
    assert reader.get_manifest("infra-ci", "v1").content == image.manifest_bytes
    with pytest.raises(PushError):
        reader.push_image("infra-ci", "v2", seed="reader")
    assert reader.request("GET", "/v2/_catalog").status_code == 401


def test_registry_checks_the_token_signature_and_scope(registry_token, make_pusher, tmp_path):
    issuer = registry_token.token_issuer
    make_pusher(registry_token).push_image("infra-ci", "v1")
    url = f"{registry_token.url}/v2/infra-ci/manifests/v1"
    pull = [{"type": "repository", "name": "infra-ci", "actions": ["pull"]}]

    def status(token):
        headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT_ALL}
        return requests.get(url, headers=headers, timeout=10).status_code

    assert status(issuer.issue(registry_token.username, pull)) == 200
    # Same names, another key: the registry must not trust it.
    impostor = TokenIssuer(tmp_path, {}, service=issuer.service, issuer=issuer.issuer)
    assert status(impostor.issue(registry_token.username, pull)) == 401
    # Right key, no access to this repository.
    other = [{"type": "repository", "name": "other", "actions": ["pull"]}]
    assert status(issuer.issue(registry_token.username, other)) == 401
    assert status(issuer.issue(registry_token.username, pull, expires_in=-60)) == 401


def test_token_requests_are_recorded(registry_token, make_pusher):
    issuer = registry_token.token_issuer
    pusher = make_pusher(registry_token)
    pusher.push_image("infra-ci", "a", seed="a")
    pusher.push_image("infra-ci", "b", seed="b")
    assert pusher.get_manifest("infra-ci", "a").status_code == 200
    assert pusher.get_manifest("infra-ci", "b").status_code == 200
    granted = [r for r in issuer.requests if r.status == 200]
    # The pusher caches per scope: one token for reads, one for writes in that repository.
    assert sorted(r.requested_scopes for r in granted) == [
        ("repository:infra-ci:pull",),
        ("repository:infra-ci:pull,push",),
    ]
    assert issuer.token_request_count(registry_token.username) == 2
    issuer.reset_requests()
    assert issuer.token_request_count() == 0


# -- pushed content ----------------------------------------------------------------------------


def test_oci_index_children_need_the_oci_accept_types(registry, pusher):
    index = pusher.push_index("infra-ci", "latest", seed="accept")
    assert [c.platform for c in index.children] == ["linux/amd64", "linux/arm64", "unknown/unknown", "unknown/unknown"]
    root = pusher.get_manifest("infra-ci", "latest")
    assert root.headers["Content-Type"] == OCI_INDEX
    assert root.headers["Docker-Content-Digest"] == index.digest
    listed = [m["digest"] for m in json.loads(root.content)["manifests"]]
    assert listed == [c.digest for c in index.children]
    for child in index.children:
        full = pusher.get_manifest("infra-ci", child.digest, accept=ACCEPT_ALL)
        assert full.status_code == 200
        assert "sha256:" + hashlib.sha256(full.content).hexdigest() == child.digest
        for method in ("GET", "HEAD"):
            # The registry.md quirk: without the OCI types a healthy OCI manifest answers 404.
            assert (
                pusher.get_manifest("infra-ci", child.digest, accept=ACCEPT_DOCKER_ONLY, method=method).status_code
                == 404
            )
        for blob in child.blob_digests:
            assert pusher.blob_exists("infra-ci", blob)
    for proof in index.attestation_children:
        assert proof.annotations["vnd.docker.reference.type"] == "attestation-manifest"
        assert proof.annotations["vnd.docker.reference.digest"] in [c.digest for c in index.image_children]


def test_docker_manifest_list_and_nested_names(registry, pusher):
    index = pusher.push_index(
        "team/app/api", "1.0", fmt="docker", attestations=False, platforms=("linux/amd64", "linux/arm/v7")
    )
    assert index.media_type == DOCKER_LIST and len(index.children) == 2
    assert pusher.get_manifest("team/app/api", "1.0").headers["Content-Type"] == DOCKER_LIST
    for child in index.children:
        assert pusher.get_manifest("team/app/api", child.digest, accept=ACCEPT_DOCKER_ONLY).status_code == 200
    assert json.loads(index.manifest_bytes)["manifests"][1]["platform"] == {
        "architecture": "arm",
        "os": "linux",
        "variant": "v7",
    }
    assert pusher.catalog() == ["team/app/api"]
    assert (registry.tree / "repositories" / "team" / "app" / "api" / "_layers").is_dir()


def test_seeds_make_distinct_images_and_shared_layers_are_shared(registry, pusher):
    shared = make_layer("shared")
    first = pusher.push_image("infra-ci", "one", seed="1", layers=[shared])
    second = pusher.push_image("infra-ci", "two", seed="2", layers=[shared])
    third = pusher.push_image("infra-ci", "three", seed="3")
    assert len({first.digest, second.digest, third.digest}) == 3
    assert first.layer_digests == second.layer_digests != third.layer_digests
    again = pusher.push_image("infra-ci", "one-again", seed="1", layers=[shared])
    assert again.digest == first.digest


def test_push_many_pushes_distinct_tags_in_parallel(registry_token, make_pusher):
    pusher = make_pusher(registry_token)
    tags = [f"build-{n}" for n in range(12)]
    pushed = pusher.push_many("ci/bulk", tags, workers=3)
    assert [p.tag for p in pushed] == tags
    assert len({p.digest for p in pushed}) == len(tags)
    assert sorted(pusher.list_tags("ci/bulk")) == sorted(tags)
    indexes = pusher.push_many("ci/multi", ["a", "b"], kind="index", workers=2)
    assert all(pusher.get_manifest("ci/multi", i.tag).content == i.manifest_bytes for i in indexes)


def test_foreign_layer_is_listed_not_uploaded(registry, pusher):
    image = pusher.push_foreign_layer_image("windows/base", "ltsc2022")
    manifest = json.loads(pusher.get_manifest("windows/base", "ltsc2022").content)
    foreign = manifest["layers"][0]
    assert foreign["mediaType"] == OCI_FOREIGN_LAYER and foreign["urls"]
    assert image.foreign_layer_digests == [foreign["digest"]]
    assert pusher.blob_status("windows/base", foreign["digest"]) == 404
    assert all(pusher.blob_exists("windows/base", d) for d in image.blob_digests)


# -- lifecycle ---------------------------------------------------------------------------------


def test_restart_keeps_port_and_content_and_stop_ends_the_process(registry, pusher):
    image = pusher.push_image("infra-ci", "v1")
    old_pid = registry.pid
    registry.restart()
    assert registry.pid != old_pid
    with pytest.raises(ProcessLookupError):
        os.kill(old_pid, 0)
    assert pusher.get_manifest("infra-ci", "v1").content == image.manifest_bytes
    pid = registry.pid
    registry.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{registry.url}/v2/", timeout=5)


def test_readonly_mode_refuses_pushes_and_serves_pulls(registry, pusher):
    image = pusher.push_image("infra-ci", "v1")
    registry.set_readonly(True)
    assert registry.config["storage"]["maintenance"]["readonly"]["enabled"] is True
    assert pusher.get_manifest("infra-ci", "v1").content == image.manifest_bytes
    with pytest.raises(PushError):
        pusher.push_image("infra-ci", "v2", seed="while read-only")
    registry.set_readonly(False)
    pusher.push_image("infra-ci", "v2", seed="writable again")


def test_a_registry_that_cannot_start_fails_loudly(tmp_path):
    with pytest.raises(RegistryStartError, match="log tail"):
        start_registry(tmp_path, config_overrides={"storage": {"filesystem": None, "nosuchdriver": {}}})


def test_garbage_collect_dry_run_deletes_nothing(registry, pusher):
    image = pusher.push_image("infra-ci", "v1")
    config_data = registry.blob_data_path(image.config_digest)
    assert config_data.is_file()
    assert registry.layer_link_path("infra-ci", image.config_digest).read_text() == image.config_digest
    assert registry.revision_link_path("infra-ci", image.digest).read_text() == image.digest
    assert registry.tag_path("infra-ci", "v1").joinpath("current", "link").read_text() == image.digest
    assert pusher.delete_manifest("infra-ci", image.digest).status_code == 202
    registry.stop()
    dry = registry.garbage_collect(dry_run=True)
    assert dry.returncode == 0
    assert f"blob eligible for deletion: {image.config_digest}" in dry.stdout + dry.stderr
    assert config_data.is_file()
    real = registry.garbage_collect()
    assert real.returncode == 0 and not config_data.exists()
    registry.start()


def test_blob_descriptor_cache_answers_head_for_collected_blobs(registry, pusher):
    # The stock inmemory cache is configured on purpose: this is the lie the collection must see through.
    image = pusher.push_image("infra-ci", "v1")
    layer = image.layer_digests[0]
    assert pusher.delete_manifest("infra-ci", image.digest).status_code == 202
    assert registry.garbage_collect().returncode == 0  # while the registry keeps running
    assert pusher.head_blob("infra-ci", layer).status_code == 200
    assert not pusher.blob_exists("infra-ci", layer)
    registry.restart()
    assert pusher.head_blob("infra-ci", layer).status_code == 404


# -- the incident ------------------------------------------------------------------------------


def _assert_incident(incident, pusher):
    assert pusher.get_manifest(incident.repository, incident.tag).status_code == 200
    assert sorted(incident.missing_manifests) == sorted(c.digest for c in incident.index.children)
    for digest in incident.missing_manifests:
        response = pusher.get_manifest(incident.repository, digest, accept=ACCEPT_ALL)
        assert response.status_code == 404 and "MANIFEST_UNKNOWN" in response.text
        # The bytes stay in blobs/; only the revision link is gone.
        assert incident.server.blob_data_path(digest).is_file()
        assert not incident.server.revision_link_path(incident.repository, digest).exists()
    for digest in incident.missing_blobs:
        assert pusher.blob_status(incident.repository, digest) == 404
    assert incident.keep_image.layer_digests[0] in incident.surviving_blobs
    assert set(incident.missing_blobs) | set(incident.surviving_blobs) == set(incident.index.blob_digests)
    assert pusher.get_manifest(incident.keep_image.repository, incident.keep_image.tag).status_code == 200


def test_incident_untagged_children(incident, pusher):
    assert incident.variant == "untagged_children"
    _assert_incident(incident, pusher)


def test_incident_tag_dirs_removed(registry, pusher):
    incident = reproduce_incident(registry, pusher, "team/infra-ci", "main", variant="tag_dirs_removed")
    assert "build-1-amd64" not in pusher.list_tags("team/infra-ci")
    _assert_incident(incident, pusher)


def test_incident_children_deleted_by_api(registry, pusher):
    incident = reproduce_incident(registry, pusher, variant="children_deleted_by_api")
    assert "--delete-untagged" not in " ".join(incident.gc_result.args)
    _assert_incident(incident, pusher)


def test_incident_on_a_docker_manifest_list(registry, pusher):
    incident = reproduce_incident(registry, pusher, "legacy/app", "stable", fmt="docker")
    assert incident.index.media_type == DOCKER_LIST
    _assert_incident(incident, pusher)


def test_incident_with_the_kept_image_in_another_repository(registry, pusher):
    keeper = pusher.push_image("base/debian", "bookworm", layers=[make_layer("debian rootfs")])
    incident = reproduce_incident(registry, pusher, keep_image=keeper)
    _assert_incident(incident, pusher)


def test_reproduce_incident_raises_when_gc_leaves_the_children(registry, pusher, monkeypatch):
    # A plain GC (no --delete-untagged) keeps index children: the function must say so, not pass.
    plain_gc = registry.garbage_collect
    monkeypatch.setattr(registry, "garbage_collect", lambda **kwargs: plain_gc())
    with pytest.raises(IncidentNotReproduced, match="children"):
        reproduce_incident(registry, pusher)


def test_pusher_works_after_the_incident_without_trusting_old_blobs(incident, pusher):
    # The pusher forgets what it uploaded when the server was collected: re-pushing restores the child.
    child = incident.index.image_children[0]
    repaired = pusher.push_image(incident.repository, None, platform=child.platform, layers=child.layers)
    assert repaired.digest == child.digest
    assert pusher.get_manifest(incident.repository, child.digest).status_code == 200
    assert all(pusher.blob_exists(incident.repository, d) for d in child.blob_digests)


def test_pusher_without_credentials_is_refused(registry_basic):
    anonymous = ImagePusher(registry_basic, username="", password="")
    anonymous.session.auth = None
    with pytest.raises(PushError):
        anonymous.push_image("infra-ci", "v1")


# -- the other shared fixtures start --------------------------------------------------------------


def test_sshd_and_woodpecker_fixtures_start(sshd_server, fake_woodpecker):
    from tests.harness.sshd import run_ssh

    assert run_ssh(sshd_server, "true").returncode == 0
    assert fake_woodpecker.url.startswith("http://127.0.0.1:")
    # Without a token the fake answers like Woodpecker does: 401, which proves it is serving.
    assert requests.get(f"{fake_woodpecker.url}/api/user", timeout=10).status_code == 401
