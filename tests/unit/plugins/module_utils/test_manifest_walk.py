# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The walk over a small loopback registry: dedup, chains, labels, filters.

The same behaviours against the real registry are in tests/integration/test_registry_manifest_verify_live.py.
"""

from __future__ import annotations

import collections
import typing as t

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils._image_reference import parse_image_reference
from ansible_collections.selfhosted.registry.plugins.module_utils._manifest_walk import (
    ManifestWalker,
    WalkError,
)
from ansible_collections.selfhosted.registry.plugins.module_utils._registry_client import RegistryClient
from tests.unit.plugins.module_utils.registry_fakes import (
    OCI_MANIFEST,
    FakeRegistry,
    Reply,
    digest_of,
    json_reply,
    manifest_reply,
)

AMD64 = {"platform": {"os": "linux", "architecture": "amd64"}}
ARM64 = {"platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}


def attestation_of(subject: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    return {
        "platform": {"os": "unknown", "architecture": "unknown"},
        "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                        "vnd.docker.reference.digest": subject["digest"]},
    }


@pytest.fixture
def fake() -> t.Iterator[FakeRegistry]:
    server = FakeRegistry().start()
    yield server
    server.stop()


def walk(fake: FakeRegistry, *references: str, **kwargs: t.Any):
    client_options = {"backoff": 0.01, "retries": 1}
    client_options.update({k: kwargs.pop(k) for k in ("retries", "timeout") if k in kwargs})
    client = RegistryClient(fake.url, **client_options)
    return ManifestWalker(client, **kwargs).verify([parse_image_reference(r) for r in references])


def multi_arch(fake: FakeRegistry, repository: str, tag: str, base: bytes, seed: str) -> t.Dict[str, t.Dict]:
    amd = fake.add_image(repository, [base, f"{seed}-amd".encode()], seed=f"{seed}-amd")
    arm = fake.add_image(repository, [base, f"{seed}-arm".encode()], seed=f"{seed}-arm")
    proof = fake.add_image(repository, [f"{seed}-provenance".encode()], seed=f"{seed}-proof")
    index = fake.add_index(repository, [(amd, AMD64), (arm, ARM64), (proof, attestation_of(amd))], tag)
    return {"index": index, "amd": amd, "arm": arm, "proof": proof}


def requests_per_object(fake: FakeRegistry) -> collections.Counter:
    return collections.Counter((s.method, s.path) for s in fake.seen if s.path != "/v2/")


def test_every_object_is_requested_once_however_many_images_share_it(fake: FakeRegistry) -> None:
    base = b"shared base layer"
    references = []
    for number in range(12):
        multi_arch(fake, "infra-ci", f"build-{number}", base, f"b{number}")
        references.append(f"infra-ci:build-{number}")
    # The same index again by digest, and a second tag on it.
    first = fake.manifests[("infra-ci", "build-0")]
    fake.manifests[("infra-ci", "again")] = first
    references += [f"infra-ci@{digest_of(first[0])}", "infra-ci:again"]

    result = walk(fake, *references, concurrency=8)

    assert result.ok, result.broken
    counts = requests_per_object(fake)
    assert max(counts.values()) == 1, [key for key, count in counts.items() if count > 1]
    base_digest = digest_of(base)
    assert counts[("HEAD", f"/v2/infra-ci/blobs/{base_digest}")] == 1
    # Each tag must be asked once (13), the digest reference once, and 12 x 3 children.
    assert result.summary.manifests == 13 + 1 + 12 * 3
    assert result.summary.requests == len(fake.seen)


def test_index_children_are_labelled_and_attestations_walked(fake: FakeRegistry) -> None:
    pushed = multi_arch(fake, "app", "v1", b"base", "x")
    result = walk(fake, "app:v1")
    image = result.images[0]
    assert image.digest == pushed["index"]["digest"]
    assert image.media_type == "application/vnd.oci.image.index.v1+json"
    assert [(c.digest, c.platform, c.kind) for c in image.children] == [
        (pushed["amd"]["digest"], "linux/amd64", "image"),
        (pushed["arm"]["digest"], "linux/arm64/v8", "image"),
        (pushed["proof"]["digest"], "unknown/unknown", "attestation"),
    ]
    assert ("GET", f"/v2/app/manifests/{pushed['proof']['digest']}") in requests_per_object(fake)


def test_missing_child_and_missing_layer_are_named_with_their_chains(fake: FakeRegistry) -> None:
    pushed = multi_arch(fake, "infra-ci", "latest", b"base", "x")
    del fake.manifests[("infra-ci", pushed["arm"]["digest"])]
    amd_layer = digest_of(b"x-amd")
    del fake.blobs[("infra-ci", amd_layer)]

    result = walk(fake, "infra-ci:latest")

    assert not result.ok
    index = pushed["index"]["digest"]
    found = {(b.object_type, b.digest): b for b in result.broken}
    assert set(found) == {("manifest", pushed["arm"]["digest"]), ("layer", amd_layer)}
    child = found[("manifest", pushed["arm"]["digest"])]
    assert child.chain == ["infra-ci:latest", index, pushed["arm"]["digest"]]
    assert (child.status, child.error_code) == (404, "MANIFEST_UNKNOWN")
    assert child.message == (f"infra-ci:latest: child manifest {pushed['arm']['digest']} answered 404 MANIFEST_UNKNOWN.")
    layer = found[("layer", amd_layer)]
    assert layer.chain == ["infra-ci:latest", index, pushed["amd"]["digest"], amd_layer]
    assert (layer.status, layer.error_code) == (404, "BLOB_UNKNOWN")
    assert layer.message == f"infra-ci:latest: layer blob {amd_layer} answered 404 BLOB_UNKNOWN."
    assert result.summary.broken_images == 1 and result.summary.broken_objects == 2
    image = result.images[0]
    assert (image.verdict, image.orphan_index) == ("broken", True)
    assert image.reason in {child.message, layer.message}


def test_a_missing_layer_under_a_whole_index_is_broken_but_not_the_orphan_index_pattern(fake: FakeRegistry) -> None:
    multi_arch(fake, "infra-ci", "latest", b"base", "x")
    del fake.blobs[("infra-ci", digest_of(b"x-arm"))]
    image = walk(fake, "infra-ci:latest").images[0]
    assert (image.verdict, image.orphan_index) == ("broken", False)


def test_a_shared_broken_layer_is_reported_under_every_image_but_counted_once(fake: FakeRegistry) -> None:
    fake.add_image("app", [b"shared", b"one"], tag="one")
    fake.add_image("app", [b"shared", b"two"], tag="two")
    fake.add_image("app", [b"three"], tag="three")
    del fake.blobs[("app", digest_of(b"shared"))]
    result = walk(fake, "app:one", "app:two", "app:three")
    assert [b.reference for b in result.broken] == ["app:one", "app:two"]
    assert [i.ok for i in result.images] == [False, False, True]
    assert result.summary.broken_objects == 1
    assert requests_per_object(fake)[("HEAD", f"/v2/app/blobs/{digest_of(b'shared')}")] == 1


def test_a_tag_asked_for_by_name_that_does_not_exist_is_not_found_not_broken(fake: FakeRegistry) -> None:
    fake.add_image("app", [b"layer"], tag="v1")
    missing_digest = "sha256:" + "d" * 64
    result = walk(fake, "app:gone", f"app@{missing_digest}", "app:v1")
    assert not result.broken and not result.ok
    assert [(b.chain, b.object_type, b.digest, b.status, b.error_code) for b in result.not_found] == [
        (["app:gone"], "manifest", None, 404, "MANIFEST_UNKNOWN"),
        ([f"app@{missing_digest}"], "manifest", missing_digest, 404, "MANIFEST_UNKNOWN"),
    ]
    assert result.not_found[0].message == "app:gone: manifest of tag gone answered 404 MANIFEST_UNKNOWN."
    assert [(i.verdict, i.ok, i.reason) for i in result.images] == [
        ("not_found", False, result.not_found[0].message), ("not_found", False, result.not_found[1].message),
        ("ok", True, None)]
    assert result.images[0].digest is None and result.images[0].media_type is None
    assert (result.summary.not_found_images, result.summary.broken_images) == (1 + 1, 0)


def test_a_tag_its_own_tag_list_names_but_that_does_not_resolve_is_broken(fake: FakeRegistry) -> None:
    fake.routes["/v2/_catalog?n=1000"] = lambda seen: json_reply(200, {"repositories": ["app"]})
    fake.routes["/v2/app/tags/list"] = lambda seen: json_reply(200, {"tags": ["dangling"]})
    result = ManifestWalker(RegistryClient(fake.url)).verify_catalog()
    assert [(i.reference, i.verdict) for i in result.images] == [("app:dangling", "broken")]
    assert not result.not_found and [b.status for b in result.broken] == [404]


def test_platform_filter_walks_only_the_chosen_children_and_their_attestations(fake: FakeRegistry) -> None:
    pushed = multi_arch(fake, "app", "v1", b"base", "x")
    del fake.manifests[("app", pushed["arm"]["digest"])]  # would be a finding if it were walked
    result = walk(fake, "app:v1", platforms=["linux/amd64"])
    assert result.ok
    assert [c.kind for c in result.images[0].children] == ["image", "attestation"]
    assert not fake.requests_to(pushed["arm"]["digest"])
    # "linux/arm64" selects the v8 variant too.
    result = walk(fake, "app:v1", platforms=["linux/arm64"])
    assert [b.digest for b in result.broken] == [pushed["arm"]["digest"]]


def test_foreign_layers_are_labelled_not_requested(fake: FakeRegistry) -> None:
    config = fake.add_blob("win", b"{}")
    own = fake.add_blob("win", b"own layer")
    foreign = {"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
               "digest": digest_of(b"foreign"), "size": 7, "urls": ["https://example.invalid/layer"]}
    fake.add_manifest("win", {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "config": config, "layers": [foreign, own]}, "ltsc")
    result = walk(fake, "win:ltsc")
    assert result.ok
    assert result.summary.foreign_layers == 1
    assert not fake.requests_to(foreign["digest"])


def test_unknown_media_type_is_a_finding(fake: FakeRegistry) -> None:
    pushed = fake.add_manifest("old", {"schemaVersion": 1, "name": "old", "fsLayers": []}, "v1",
                               media_type="application/vnd.docker.distribution.manifest.v1+prettyjws")
    result = walk(fake, "old:v1")
    assert [(b.message, b.digest) for b in result.broken] == [(
        f"old:v1: manifest of tag v1 ({pushed['digest']}) has the unsupported media type"
        " 'application/vnd.docker.distribution.manifest.v1+prettyjws'.", pushed["digest"])]


def test_blob_size_different_from_the_descriptor_is_a_finding(fake: FakeRegistry) -> None:
    descriptor = fake.add_image("app", [b"layer"], tag="v1")
    body, media_type = fake.manifests[("app", "v1")]
    fake.blobs[("app", digest_of(b"layer"))] = b"layer plus more"
    result = walk(fake, "app:v1", blob_check="read")
    assert [b.message for b in result.broken] == [
        f"app:v1: layer blob {digest_of(b'layer')} is 15 bytes, but the manifest says 5."
    ]
    assert descriptor["digest"] in result.broken[0].chain


def test_read_mode_catches_a_blob_whose_content_is_gone(fake: FakeRegistry) -> None:
    fake.add_image("app", [b"layer"], tag="v1")
    layer = digest_of(b"layer")
    fake.routes[f"/v2/app/blobs/{layer}"] = lambda seen: Reply(200, b"", {"Content-Length": "5"}, cut_body=True)
    assert walk(fake, "app:v1", blob_check="head").ok
    result = walk(fake, "app:v1", blob_check="read", retries=None)
    assert [(b.digest, b.status) for b in result.broken] == [(layer, 200)]
    # Asked three times: the registry's blob cache cuts it short every time, a flaky network would not.
    assert len(fake.requests_to(f"/blobs/{layer}", "GET")) == 3


def test_read_mode_passes_a_blob_cut_short_only_once(fake: FakeRegistry) -> None:
    fake.add_image("app", [b"layer"], tag="v1")
    layer = digest_of(b"layer")
    answers = iter([Reply(206, b"l", {"Content-Range": "bytes 0-0/5"}, cut_body=True),
                    Reply(206, b"l", {"Content-Range": "bytes 0-0/5"})])
    fake.routes[f"/v2/app/blobs/{layer}"] = lambda seen: next(answers)
    result = walk(fake, "app:v1", blob_check="read", retries=None)
    assert result.ok, result.broken + result.unverified


def test_a_server_that_drips_is_unverified_within_the_timeout(fake: FakeRegistry) -> None:
    fake.add_image("app", [b"layer"], tag="v1")
    layer = digest_of(b"layer")
    fake.routes[f"/v2/app/blobs/{layer}"] = lambda seen: Reply(200, b"", {"Content-Length": "5"}, drip=0.05)
    result = walk(fake, "app:v1", timeout=1)
    assert not result.broken
    assert [(u.digest, u.status, u.message) for u in result.unverified] == [(
        layer, None, f"app:v1: layer blob {layer} at 127.0.0.1:{fake.port} did not answer completely"
                     " within the 1-second timeout.")]


def test_a_child_manifest_whose_size_differs_from_the_index_is_broken(fake: FakeRegistry) -> None:
    amd = fake.add_image("app", [b"amd"], seed="amd")
    arm = fake.add_image("app", [b"arm"], seed="arm")
    index = fake.add_index("app", [(dict(amd, size=amd["size"] + 1), AMD64), (arm, ARM64)], "v1")
    result = walk(fake, "app:v1")
    assert [(b.object_type, b.digest, b.chain, b.status) for b in result.broken] == [
        ("manifest", amd["digest"], ["app:v1", index["digest"], amd["digest"]], 200)]
    assert result.broken[0].message == (
        f"app:v1: child manifest {amd['digest']} is {amd['size']} bytes, but the index says {amd['size'] + 1}.")


@pytest.mark.parametrize("document, says", [
    ({"config": {"digest": "sha256:" + "c" * 64}, "layers": {"digest": "sha256:" + "d" * 64}},
     "has a layers field that is an object, not a list"),
    ({"config": {"digest": "sha256:" + "c" * 64}}, "has no layers list"),
    ({"config": "sha256:" + "c" * 64, "layers": []}, "has no config with a valid digest"),
], ids=["layers-object", "layers-missing", "config-string"])
def test_a_malformed_image_manifest_says_which_field_is_wrong(fake: FakeRegistry, document, says: str) -> None:
    pushed = fake.add_manifest("app", dict(document, schemaVersion=2, mediaType=OCI_MANIFEST), "v1")
    result = walk(fake, "app:v1")
    assert [b.message for b in result.broken] == [f"app:v1: manifest of tag v1 ({pushed['digest']}) {says}."]


def test_garbage_index_is_a_finding_not_a_crash(fake: FakeRegistry) -> None:
    fake.add_manifest("app", {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                              "manifests": [{"digest": "../../etc/passwd"}]}, "bad")
    fake.routes["/v2/app/manifests/html"] = lambda seen: Reply(200, b"<html>", {"Content-Type": "text/html"})
    result = walk(fake, "app:bad", "app:html")
    bad = digest_of(fake.manifests[("app", "bad")][0])
    html = digest_of(b"<html>")
    assert [(b.message, b.digest, b.chain) for b in result.broken] == [
        (f"app:bad: manifest of tag bad ({bad}) lists a child without a valid digest.", bad, ["app:bad", bad]),
        (f"app:html: manifest of tag html ({html}) is not JSON (text/html).", html, ["app:html", html]),
    ]


def test_catalog_mode_filters_repositories(fake: FakeRegistry) -> None:
    fake.routes["/v2/_catalog?n=1000"] = lambda seen: json_reply(200, {"repositories": ["team/a", "team/b", "other"]})
    for repository in ("team/a", "team/b", "other"):
        fake.add_image(repository, [repository.encode()], tag="v1")
        fake.routes[f"/v2/{repository}/tags/list"] = (
            lambda seen, r=repository: json_reply(200, {"name": r, "tags": ["v1", "gone"] if r == "team/b" else ["v1"]}))
    client = RegistryClient(fake.url)
    result = ManifestWalker(client).verify_catalog(["team/*"])
    assert [i.reference for i in result.images] == ["team/a:v1", "team/b:gone", "team/b:v1"]
    assert [b.reference for b in result.broken] == ["team/b:gone"]
    assert not fake.requests_to("/v2/other/")


def test_mirror_catalog_checks_only_the_tagged_manifests_with_head(fake: FakeRegistry) -> None:
    pushed = multi_arch(fake, "library/alpine", "3", b"base", "x")
    fake.routes["/v2/_catalog?n=1000"] = lambda seen: json_reply(200, {"repositories": ["library/alpine"]})
    fake.routes["/v2/library/alpine/tags/list"] = lambda seen: json_reply(200, {"tags": ["3", "4"]})
    result = ManifestWalker(RegistryClient(fake.url), descend=False).verify_catalog()
    assert {(s.method, s.path.split("/")[-1]) for s in fake.seen if "/manifests/" in s.path} == {
        ("HEAD", "3"), ("HEAD", "4"), ("GET", "4")}  # the GET only fetches the error code of the 404
    assert [b.reference for b in result.broken] == ["library/alpine:4"]
    assert result.images[0].digest == pushed["index"]["digest"]
    assert not fake.requests_to("/blobs/")


def test_unreachable_registry_stops_the_walk_with_one_sentence() -> None:
    from tests.harness.registry import free_port

    port = free_port()
    walker = ManifestWalker(RegistryClient(f"http://127.0.0.1:{port}", retries=0))
    with pytest.raises(WalkError) as caught:
        walker.verify([parse_image_reference("app:v1")])
    assert str(caught.value) == f"Could not reach the v2 API of 127.0.0.1:{port} at 127.0.0.1:{port}: connection refused."


def test_bad_blob_check_mode() -> None:
    with pytest.raises(ValueError, match="blob_check must be one of head, read"):
        ManifestWalker(RegistryClient("http://127.0.0.1:1"), blob_check="sometimes")


def test_a_remembered_child_names_its_configs_and_layers_once_it_is_gone(fake: FakeRegistry, tmp_path) -> None:
    from ansible_collections.selfhosted.registry.plugins.module_utils._manifest_walk import ManifestCache

    cache = ManifestCache(str(tmp_path / "manifests"))
    pushed = multi_arch(fake, "infra-ci", "latest", b"base", "x")
    assert walk(fake, "infra-ci:latest", cache=cache).ok
    amd = pushed["amd"]["digest"]
    amd_layer = digest_of(b"x-amd")
    del fake.manifests[("infra-ci", amd)]
    del fake.blobs[("infra-ci", amd_layer)]

    without = walk(fake, "infra-ci:latest")
    assert [(b.object_type, b.digest) for b in without.broken] == [("manifest", amd)]

    result = walk(fake, "infra-ci:latest", cache=cache)
    index = pushed["index"]["digest"]
    assert [(b.object_type, b.digest, b.chain, b.status) for b in result.broken] == [
        ("manifest", amd, ["infra-ci:latest", index, amd], 404),
        ("layer", amd_layer, ["infra-ci:latest", index, amd, amd_layer], 404),
    ]
    assert result.summary.broken_objects == 2 and result.summary.broken_images == 1


def test_a_tampered_cache_file_is_never_used(fake: FakeRegistry, tmp_path) -> None:
    from ansible_collections.selfhosted.registry.plugins.module_utils._manifest_walk import ManifestCache

    cache = ManifestCache(str(tmp_path))
    pushed = multi_arch(fake, "app", "v1", b"base", "x")
    assert walk(fake, "app:v1", cache=cache).ok
    amd = pushed["amd"]["digest"]
    stored = tmp_path / "sha256" / amd.split(":", 1)[1]
    stored.write_text('{"schemaVersion": 2, "config": {"digest": "sha256:' + "e" * 64 + '"}, "layers": []}')
    del fake.manifests[("app", amd)]
    result = walk(fake, "app:v1", cache=cache)
    assert [(b.object_type, b.digest) for b in result.broken] == [("manifest", amd)]
    assert cache.get(amd) is None and cache.get("../../etc/passwd") is None


def test_a_throttled_or_failing_registry_is_unverified_never_broken(fake: FakeRegistry) -> None:
    fake.add_image("app", [b"layer"], tag="v1")
    fake.add_image("app", [b"other"], tag="v2", seed="v2")
    fake.add_image("gone", [b"x"], tag="v1")
    del fake.manifests[("gone", "v1")]
    layer = digest_of(b"layer")
    fake.routes[f"/v2/app/blobs/{layer}"] = lambda seen: Reply(503, b"", {"Retry-After": "0"})
    fake.routes["/v2/app/manifests/v2"] = lambda seen: json_reply(429, {"errors": [{"code": "TOOMANYREQUESTS"}]})
    result = walk(fake, "app:v1", "app:v2", "gone:v1")
    assert not result.ok
    assert [(i.reference, i.verdict, i.ok) for i in result.images] == [
        ("app:v1", "unverified", False), ("app:v2", "unverified", False), ("gone:v1", "not_found", False)]
    assert [(u.reference, u.status, u.digest) for u in result.unverified] == [
        ("app:v1", 503, layer), ("app:v2", 429, None)]
    assert [b.reference for b in result.not_found] == ["gone:v1"] and not result.broken
    assert (result.summary.not_found_images, result.summary.unverified_images) == (1, 2)
    assert result.summary.unverified_objects == 2


def test_broken_wins_over_unverified_within_one_image(fake: FakeRegistry) -> None:
    fake.add_image("app", [b"gone", b"slow"], tag="v1")
    fake.routes[f"/v2/app/blobs/{digest_of(b'slow')}"] = lambda seen: Reply(500)
    del fake.blobs[("app", digest_of(b"gone"))]
    result = walk(fake, "app:v1")
    assert result.images[0].verdict == "broken"
    assert [b.digest for b in result.broken] == [digest_of(b"gone")]
    assert [u.digest for u in result.unverified] == [digest_of(b"slow")]


def test_a_manifest_nested_too_deeply_is_broken_not_a_crash(fake: FakeRegistry) -> None:
    body = b'{"schemaVersion": 2, "layers": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    fake.routes["/v2/app/manifests/deep"] = lambda seen: manifest_reply(body, OCI_MANIFEST)
    result = walk(fake, "app:deep")
    assert [(b.message, b.digest) for b in result.broken] == [
        (f"app:deep: manifest of tag deep ({digest_of(body)}) is JSON nested too deeply to be a manifest.",
         digest_of(body))]
    assert result.images[0].digest == digest_of(body)


def test_catalog_mode_reports_an_unreadable_tag_list_and_verifies_the_rest(fake: FakeRegistry) -> None:
    fake.routes["/v2/_catalog?n=1000"] = lambda seen: json_reply(200, {"repositories": ["a", "b", "c"]})
    for repository in ("a", "c"):
        fake.add_image(repository, [repository.encode()], tag="v1")
        fake.routes[f"/v2/{repository}/tags/list"] = lambda seen, r=repository: json_reply(200, {"tags": ["v1"]})
    fake.routes["/v2/b/tags/list"] = lambda seen: json_reply(404, {"errors": [{"code": "NAME_UNKNOWN"}]})
    result = ManifestWalker(RegistryClient(fake.url)).verify_catalog()
    assert [i.reference for i in result.images] == ["a:v1", "c:v1"]
    assert all(i.ok for i in result.images) and not result.broken and not result.ok
    assert [(e.repository, e.status, e.error_code) for e in result.repository_errors] == [("b", 404, "NAME_UNKNOWN")]
    assert result.repository_errors[0].message == f"The tag list of b of 127.0.0.1:{fake.port} answered 404 NAME_UNKNOWN."
    assert result.summary.repository_errors == 1


def test_an_unreadable_catalog_stops_the_walk(fake: FakeRegistry) -> None:
    fake.routes["/v2/_catalog?n=1000"] = lambda seen: json_reply(503, {"errors": [{"code": "UNAVAILABLE"}]})
    with pytest.raises(WalkError, match="The catalog of 127.0.0.1:[0-9]+ answered 503 UNAVAILABLE."):
        ManifestWalker(RegistryClient(fake.url, retries=0)).verify_catalog()


def test_credentials_refused_in_the_middle_of_a_walk_are_unverified_not_broken(fake: FakeRegistry) -> None:
    fake.add_image("app", [b"denied", b"challenged"], tag="v1")
    denied, challenged = digest_of(b"denied"), digest_of(b"challenged")
    fake.routes[f"/v2/app/blobs/{denied}"] = lambda seen: json_reply(403, {"errors": [{"code": "DENIED"}]})
    fake.routes[f"/v2/app/blobs/{challenged}"] = lambda seen: Reply(
        401, b"", {"WWW-Authenticate": 'Basic realm="r"'})
    client = RegistryClient(fake.url, username="reader", password="pw", backoff=0.01, retries=1)
    result = ManifestWalker(client).verify([parse_image_reference("app:v1")])
    assert not result.broken and result.images[0].verdict == "unverified"
    assert sorted((u.digest, u.status) for u in result.unverified) == sorted([(denied, 403), (challenged, 401)])
    assert f"app:v1: Registry 127.0.0.1:{fake.port} rejected the credentials for layer blob {challenged}." in [
        u.message for u in result.unverified]


def test_indexes_nested_deeper_than_the_walk_goes_are_unverified_never_broken(fake: FakeRegistry) -> None:
    descriptor = fake.add_image("app", [b"layer"])
    for level in range(6):
        descriptor = fake.add_index("app", [(descriptor, {"platform": {"os": "linux", "architecture": "amd64"}})],
                                    tag="deep" if level == 5 else None)
    result = walk(fake, "app:deep")
    assert not result.broken and result.images[0].verdict == "unverified"
    assert "nests indexes deeper than the 4 levels this verifier walks" in result.unverified[0].message


@pytest.mark.parametrize("claim", ["sha256:" + "f" * 64, "sha256:short"])
def test_a_child_whose_header_claims_another_digest_is_named_by_the_digest_its_index_lists(
        fake: FakeRegistry, claim: str) -> None:
    pushed = multi_arch(fake, "app", "v1", b"base", "lying")
    child = pushed["arm"]["digest"]
    body, media_type = fake.manifests[("app", child)]
    fake.routes[f"/v2/app/manifests/{child}"] = lambda seen: manifest_reply(body, media_type, claim)
    result = walk(fake, "app:v1")
    assert [finding.digest for finding in result.broken] == [child]
    assert result.broken[0].chain == ["app:v1", pushed["index"]["digest"], child]
    assert claim not in result.broken[0].chain


def test_a_mirror_tag_with_a_malformed_header_has_no_digest(fake: FakeRegistry) -> None:
    fake.add_image("app", [b"layer"], tag="v1")
    fake.routes["/v2/app/manifests/v1"] = lambda seen: Reply(
        200, b"", {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": "sha256:../../etc"})
    result = walk(fake, "app:v1", descend=False)
    assert result.ok and result.images[0].digest is None
