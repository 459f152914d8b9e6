# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The verify core against the real registry (Debian's docker-registry 2.8.2) and the real GC.

What the harness's pusher put into the registry is the oracle; the incident is measured by the
harness over HTTP independently of the code under test.
"""

from __future__ import annotations

import json
import pathlib
import re
import socket
import subprocess
import threading
import time
import typing as t

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils._image_reference import parse_image_reference
from ansible_collections.selfhosted.registry.plugins.module_utils._manifest_walk import (
    ManifestCache,
    ManifestWalker,
    WalkError,
    WalkResult,
)
from ansible_collections.selfhosted.registry.plugins.module_utils._registry_client import (
    RegistryClient,
    RegistryError,
)
from tests.harness.images import ImagePusher, PushedImage, PushedIndex, make_layer
from tests.harness.incident import Incident, reproduce_incident
from tests.harness.registry import RegistryServer, free_port


# One "response completed" line per request in the registry's log, with the client's User-Agent.
ACCESS_LINE = re.compile(
    r'msg="response completed".* http\.request\.method=(\S+) .*http\.request\.uri="?([^"\s]+)"?'
    r'.* http\.request\.useragent="?selfhosted\.registry'
)


def client_for(server: RegistryServer, **kwargs: t.Any) -> RegistryClient:
    kwargs.setdefault("username", server.username)
    kwargs.setdefault("password", server.password)
    kwargs.setdefault("verify", server.verify)
    return RegistryClient(server.url, **kwargs)


def verify(server: RegistryServer, *references: str, **kwargs: t.Any) -> WalkResult:
    client_kwargs = {k: kwargs.pop(k) for k in ("username", "password", "verify") if k in kwargs}
    with client_for(server, **client_kwargs) as client:
        return ManifestWalker(client, **kwargs).verify([parse_image_reference(r, server.host) for r in references])


def push_variety(pusher: ImagePusher) -> t.List[t.Union[PushedImage, PushedIndex]]:
    """Every kind of content the harness can push, sharing one base layer."""
    base = make_layer("shared base layer\n")
    return [
        pusher.push_index("infra-ci", "latest", fmt="oci", shared_layers=[base], seed="oci"),
        pusher.push_index("infra-ci", "docker-list", fmt="docker", shared_layers=[base], seed="docker"),
        pusher.push_image("team/app/api", "v1", fmt="oci", layers=[base, make_layer("api\n")]),
        pusher.push_image("team/app/api", "v1-docker", fmt="docker", layers=[base, make_layer("api-d\n")]),
        pusher.push_foreign_layer_image("windows/base", "ltsc2022"),
    ]


def expected_counts(pushed: t.Sequence[t.Union[PushedImage, PushedIndex]]) -> t.Tuple[int, int]:
    manifests: t.Set[t.Tuple[str, str]] = set()
    blobs: t.Set[t.Tuple[str, str]] = set()
    tags = 0
    for item in pushed:
        tags += 1
        children = item.children if isinstance(item, PushedIndex) else []
        for child in children:
            manifests.add((item.repository, child.digest))
        for image in children or [item]:
            blobs.update((item.repository, digest) for digest in image.blob_digests)
    return tags + len(manifests), len(blobs)


def test_healthy_images_pass_in_every_auth_mode(any_registry: RegistryServer, make_pusher: t.Callable) -> None:
    pushed = push_variety(make_pusher(any_registry))
    references = [f"{item.repository}:{item.tag}" for item in pushed]
    result = verify(any_registry, *references)
    assert result.ok, [b.message for b in result.broken]
    manifests, blobs = expected_counts(pushed)
    assert (result.summary.manifests, result.summary.blobs) == (manifests, blobs)
    assert result.summary.foreign_layers == 1
    index = result.images[0]
    assert index.digest == pushed[0].digest
    assert [(c.digest, c.kind) for c in index.children] == [
        (child.digest, "attestation" if child.is_attestation else "image") for child in pushed[0].children
    ]
    # Read mode too, and by digest with a host prefix.
    pinned = f"{any_registry.host}/infra-ci:latest@{pushed[0].digest}"
    assert verify(any_registry, pinned, *references, blob_check="read").ok


def test_healthy_catalog_passes_with_token_auth_and_the_catalog_scope(registry_token: RegistryServer,
                                                                      make_pusher: t.Callable) -> None:
    pushed = push_variety(make_pusher(registry_token))
    with client_for(registry_token) as client:
        result = ManifestWalker(client).verify_catalog()
    assert result.ok
    assert sorted(i.reference for i in result.images) == sorted(f"{p.repository}:{p.tag}" for p in pushed)


def assert_names_the_incident(result: WalkResult, incident: Incident, reference: str) -> None:
    assert not result.ok
    broken_manifests = {b.digest for b in result.broken if b.object_type == "manifest"}
    assert broken_manifests == set(incident.missing_manifests)
    for broken in result.broken:
        assert broken.reference == reference
        assert broken.chain == [reference, incident.index.digest, broken.digest]
        assert (broken.status, broken.error_code) == (404, "MANIFEST_UNKNOWN")
    # The configs and layers of a child that is gone cannot be read over the API: none is claimed,
    # and nothing that survived is reported.
    assert not [b for b in result.broken if b.object_type != "manifest"]
    labels = {b.digest: b.message.split(": ", 1)[1].split(" sha256:")[0] for b in result.broken}
    attestations = {child.digest for child in incident.index.attestation_children}
    assert {d for d, label in labels.items() if label == "attestation manifest"} == attestations


@pytest.mark.parametrize("variant", ["untagged_children", "tag_dirs_removed"])
def test_the_reproduced_incident_is_named_exactly(registry: RegistryServer, pusher: ImagePusher, variant: str) -> None:
    incident = reproduce_incident(registry, pusher, variant=variant)
    keep = incident.keep_image
    result = verify(registry, "infra-ci:latest", f"{keep.repository}:{keep.tag}")
    assert_names_the_incident(result, incident, "infra-ci:latest")
    assert [i.ok for i in result.images] == [False, True]
    assert result.summary.broken_objects == len(incident.missing_manifests)


def test_missing_blobs_of_a_readable_manifest_are_named_with_their_chains(registry: RegistryServer,
                                                                          make_pusher: t.Callable) -> None:
    """The blob-descriptor cache lie after GC on a RUNNING registry: head passes, read does not."""
    pusher = make_pusher(registry, check_existing=True)  # HEAD before upload, as docker push does
    first = pusher.push_image("app", "v1", seed="x", layers=[make_layer("will be swept\n")])
    assert pusher.delete_manifest("app", first.digest).status_code == 202
    gc = registry.garbage_collect()  # registry still running, as a careless nightly job does it
    assert gc.returncode == 0, gc.stdout + gc.stderr
    # A CI re-push of the same layer: the cache says the blob exists, so the upload is skipped.
    second = pusher.push_image("app", "v2", seed="y", layers=first.layers)
    swept = first.layer_digests[0]
    assert pusher.head_blob("app", swept).status_code == 200  # the lie, seen by an independent client
    assert pusher.blob_status("app", swept) != 200

    assert verify(registry, "app:v2", blob_check="head").ok
    result = verify(registry, "app:v2", blob_check="read")
    assert [(b.object_type, b.digest, b.chain) for b in result.broken] == [
        ("layer", swept, ["app:v2", second.digest, swept])
    ]
    assert "sent no content" in result.broken[0].message

    # After a restart the cache is empty and even HEAD tells the truth.
    registry.restart()
    result = verify(registry, "app:v2", blob_check="head")
    assert [(b.digest, b.status, b.error_code) for b in result.broken] == [(swept, 404, "BLOB_UNKNOWN")]


def test_catalog_mode_finds_the_broken_tag_among_many_healthy_ones(
    registry: RegistryServer, pusher: ImagePusher
) -> None:
    base = make_layer("catalog base\n")
    healthy = []
    for number in range(8):
        # Children tagged per platform survive `--delete-untagged`: these indexes stay healthy.
        platforms = ("linux/amd64", "linux/arm64")
        healthy.append(pusher.push_index(
            f"team/svc{number % 3}", f"v{number}", shared_layers=[base], seed=f"svc{number}", attestations=False,
            platforms=platforms, child_tags=[f"v{number}-{p.split('/')[1]}" for p in platforms]))
        healthy.append(pusher.push_image(f"team/lib{number % 2}", f"v{number}", layers=[base, make_layer(f"{number}")]))
    incident = reproduce_incident(registry, pusher)
    with client_for(registry) as client:
        result = ManifestWalker(client, concurrency=4).verify_catalog()
    # Every tag: 8 indexes and their 16 child tags, 8 images, infra-ci:latest and its keep image.
    assert len(result.images) == 8 * 3 + 8 + 2
    assert [i.reference for i in result.images if not i.ok] == ["infra-ci:latest"]
    assert_names_the_incident(result, incident, "infra-ci:latest")

    with client_for(registry) as client:
        filtered = ManifestWalker(client).verify_catalog(["team/svc*"])
    assert filtered.ok and len(filtered.images) == 8 * 3


def test_each_object_is_requested_once_per_run(registry: RegistryServer, pusher: ImagePusher) -> None:
    base = make_layer("dedup base\n")
    references = []
    for number in range(6):
        pusher.push_index("dedup", f"t{number}", shared_layers=[base], seed=f"d{number}")
        references.append(f"dedup:t{number}")
    log_start = registry.log_path.stat().st_size
    result = verify(registry, *references)
    assert result.ok
    with registry.log_path.open(encoding="utf-8", errors="replace") as log:
        log.seek(log_start)
        requested = [ACCESS_LINE.search(line).groups() for line in log if ACCESS_LINE.search(line)]
    assert requested, "the registry logged none of the verifier's requests"
    assert len(requested) == len(set(requested)) == result.summary.requests


def test_a_digest_that_does_not_exist(registry: RegistryServer, pusher: ImagePusher) -> None:
    pusher.push_image("app", "v1")
    missing = "sha256:" + "0" * 64
    result = verify(registry, f"app@{missing}", f"app:v1@{missing}")
    # A reference asked for by name that the registry has never held: not found, nothing to rebuild.
    assert not result.broken and [i.verdict for i in result.images] == ["not_found", "not_found"]
    assert [(b.chain, b.digest, b.status, b.error_code) for b in result.not_found] == [
        ([f"app@{missing}"], missing, 404, "MANIFEST_UNKNOWN"),
        ([f"app:v1@{missing}"], missing, 404, "MANIFEST_UNKNOWN"),
    ]


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_rejected_credentials_are_one_sentence_without_the_secret(make_registry: t.Callable, mode: str) -> None:
    server = make_registry(mode)
    wrong = "wrong-" + (server.password or "")
    with pytest.raises(WalkError) as caught:
        verify(server, "app:v1", password=wrong)
    message = str(caught.value)
    assert "rejected the credentials" in message
    assert wrong not in message and (server.password or "") not in message
    assert "\n" not in message


def test_anonymous_client_on_a_basic_registry(registry_basic: RegistryServer) -> None:
    with pytest.raises(WalkError, match=f"^Registry {registry_basic.host} requires credentials"):
        verify(registry_basic, "app:v1", username=None, password=None)


def test_pull_only_token_user_cannot_list_the_catalog(registry_token: RegistryServer) -> None:
    client = client_for(registry_token, username=registry_token.readonly_username,
                        password=registry_token.readonly_password)
    with pytest.raises(WalkError) as caught:
        ManifestWalker(client).verify_catalog()
    assert str(caught.value) == (f"Registry {registry_token.host} does not grant these credentials access to"
                                 " the catalog (insufficient scope).")


def test_unreachable_host() -> None:
    port = free_port()
    client = RegistryClient(f"http://127.0.0.1:{port}", retries=1, backoff=0.01)
    with pytest.raises(WalkError, match="connection refused"):
        ManifestWalker(client).verify([parse_image_reference("app:v1")])


def test_tls_is_verified_by_default(registry_tls: RegistryServer) -> None:
    with pytest.raises(RegistryError, match="TLS certificate verification failed"):
        RegistryClient(registry_tls.url, retries=0).ping()
    RegistryClient(registry_tls.url, verify=str(registry_tls.ca_path)).ping()


def test_tls_connections_are_kept_alive(
    registry_tls: RegistryServer, make_pusher: t.Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One TLS handshake for a whole walk: the idle check must not mistake TLS records for a closed socket."""
    make_pusher(registry_tls).push_index("infra-ci", "latest")
    connects = []
    real_connect = socket.create_connection

    def counted_connect(*args: t.Any, **kwargs: t.Any) -> socket.socket:
        connects.append(args)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counted_connect)
    with RegistryClient(registry_tls.url, verify=str(registry_tls.ca_path), pool_size=1) as client:
        result = ManifestWalker(client, concurrency=1, blob_check="read").verify([parse_image_reference("infra-ci:latest")])
        assert result.ok and client.request_count > 10
    assert len(connects) == 1


def test_mirror_catalog_checks_tags_without_pulling_children(make_registry: t.Callable,
                                                             make_pusher: t.Callable) -> None:
    """A real pull-through mirror (proxy.remoteurl) in front of a real upstream registry."""
    upstream = make_registry("anonymous")
    index = make_pusher(upstream).push_index("library/tool", "1.0", seed="mirror")
    mirror = make_registry("anonymous", config_overrides={"proxy": {"remoteurl": upstream.url}})
    # `docker pull --platform linux/amd64` through the mirror: the index, one child, its blobs.
    # The mirror caches those; the arm64 child and the attestations stay upstream only.
    client_of_mirror = make_pusher(mirror)
    amd64 = index.children[0]
    assert client_of_mirror.get_manifest("library/tool", "1.0").status_code == 200
    assert client_of_mirror.get_manifest("library/tool", amd64.digest).status_code == 200
    for digest in amd64.blob_digests:
        assert client_of_mirror.blob_exists("library/tool", digest)
    for _attempt in range(100):  # the mirror links a blob once it has stored it, just after serving it
        if client_of_mirror.catalog():
            break
        time.sleep(0.1)

    upstream_mark = upstream.log_path.stat().st_size
    with client_for(mirror) as client:
        result = ManifestWalker(client, descend=False).verify_catalog()
    assert result.ok and [i.reference for i in result.images] == ["library/tool:1.0"]
    assert result.images[0].digest == index.digest
    with upstream.log_path.open(encoding="utf-8", errors="replace") as log:
        log.seek(upstream_mark)
        upstream_uris = [line for line in log if "response completed" in line]
    assert not [line for line in upstream_uris for child in index.children if child.digest in line]
    # Asked for explicitly, the children are fetched through the mirror and verified.
    explicit = verify(mirror, "library/tool:1.0")
    assert explicit.ok and explicit.summary.manifests == 1 + len(index.children)


@pytest.mark.parametrize("variant, fmt", [
    ("untagged_children", "oci"),
    ("untagged_children", "docker"),
    ("tag_dirs_removed", "oci"),
    ("children_deleted_by_api", "oci"),
])
def test_with_a_manifest_cache_the_incident_is_named_down_to_every_blob(
    registry: RegistryServer, pusher: ImagePusher, tmp_path: pathlib.Path, variant: str, fmt: str
) -> None:
    """The nightly probe ran while the image was healthy; after the GC it names every object that went."""
    cache = ManifestCache(str(tmp_path / "manifests"))
    keep = pusher.push_image("infra-ci", "latest-base", layers=[make_layer("infra-ci||shared base layer\n")],
                             seed="|base")
    child_tags = ["build-1-amd64", "build-1-arm64"] if variant == "tag_dirs_removed" else None
    before = pusher.push_index("infra-ci", "latest", fmt=fmt, attestations=True, shared_layers=keep.layers[:1],
                               child_tags=child_tags)
    assert verify(registry, "infra-ci:latest", cache=cache).ok

    incident = reproduce_incident(registry, pusher, variant=variant, fmt=fmt, keep_image=keep)
    # The harness pushed the same content again before breaking it: the cache knows every child.
    assert incident.index.digest == before.digest
    assert all(cache.get(digest) is not None for digest in incident.missing_manifests)

    result = verify(registry, "infra-ci:latest", f"{keep.repository}:{keep.tag}", cache=cache)
    assert [i.ok for i in result.images] == [False, True]
    named = {(b.object_type == "manifest", b.digest) for b in result.broken}
    assert named == {(True, d) for d in incident.missing_manifests} | {(False, d) for d in incident.missing_blobs}
    assert not {b.digest for b in result.broken} & set(incident.surviving_blobs)
    children = {child.digest: child for child in incident.index.children}
    for broken in result.broken:
        assert broken.chain[:2] == ["infra-ci:latest", incident.index.digest]
        assert broken.chain[2] in children and broken.chain[-1] == broken.digest
        if broken.object_type != "manifest":
            assert len(broken.chain) == 4 and broken.digest in children[broken.chain[2]].blob_digests
            assert (broken.status, broken.error_code) == (404, "BLOB_UNKNOWN")
    assert result.summary.broken_objects == len(incident.missing_manifests) + len(incident.missing_blobs)


def test_validate_certs_off_works_without_a_warning_per_request(registry_tls: RegistryServer,
                                                                make_pusher: t.Callable) -> None:
    import warnings

    make_pusher(registry_tls).push_index("infra-ci", "latest")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = verify(registry_tls, "infra-ci:latest", verify=False)
    assert result.ok
    assert not [w for w in caught if "Unverified HTTPS" in str(w.message)]


class _RestartedAtTheFirstBlob(RegistryClient):
    """A real client whose first blob check stops the real registry, which comes back ``outage`` seconds later
    (never when None).

    Everything the walk asks for after that point meets a refused connection (or a reset) until the
    registry is back: a restart in the middle of a walk, at a point that does not depend on timing.
    """

    def __init__(self, server: RegistryServer, outage: t.Optional[float], **kwargs: t.Any):
        super().__init__(server.url, username=server.username, password=server.password, verify=server.verify,
                         **kwargs)
        self.server = server
        self.outage = outage
        self.restarted = threading.Event()
        self.back: t.Optional[threading.Thread] = None
        self._restart_lock = threading.Lock()

    def check_blob(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        with self._restart_lock:
            if not self.restarted.is_set():
                self.restarted.set()
                self.server.stop()  # by PID, SIGTERM
                if self.outage is not None:
                    self.back = threading.Thread(target=self._bring_back, daemon=True)
                    self.back.start()
        return super().check_blob(*args, **kwargs)

    def _bring_back(self) -> None:
        time.sleep(self.outage or 0)
        self.server.start()


def test_a_walk_rides_out_a_registry_restart_in_its_middle(registry: RegistryServer, pusher: ImagePusher) -> None:
    pushed = push_variety(pusher)
    references = [f"{item.repository}:{item.tag}" for item in pushed]
    with client_for(registry) as quiet:
        baseline = ManifestWalker(quiet).verify([parse_image_reference(r) for r in references])
    assert baseline.ok

    # Down for 3 s: longer than the three quick retries there were (1.75 s in all), well inside the window.
    client = _RestartedAtTheFirstBlob(registry, outage=3.0)
    try:
        result = ManifestWalker(client, blob_check="read").verify([parse_image_reference(r) for r in references])
    finally:
        if client.back is not None:
            client.back.join()
        client.close()
    assert client.restarted.is_set() and registry.is_running
    assert result.ok, [u.message for u in result.unverified + result.broken]
    assert (result.summary.manifests, result.summary.blobs) == expected_counts(pushed)
    # The retries that rode it out are counted; the walk asked for nothing twice otherwise.
    assert result.summary.requests > baseline.summary.requests


def test_a_registry_that_stays_down_is_unverified_after_the_window_not_broken(
    registry: RegistryServer, pusher: ImagePusher
) -> None:
    pusher.push_image("app", "v1", layers=[make_layer("one\n"), make_layer("two\n")])
    client = _RestartedAtTheFirstBlob(registry, outage=None, retry_window=1, backoff=0.1)
    try:
        result = ManifestWalker(client).verify([parse_image_reference("app:v1")])
    finally:
        client.close()
        registry.start()
    assert not result.ok and not result.broken
    assert {u.object_type for u in result.unverified} == {"config", "layer"}
    assert all(u.digest and "connection refused" in u.message for u in result.unverified), result.unverified


def test_the_probe_rides_out_a_registry_restart(
    registry: RegistryServer, pusher: ImagePusher, tmp_path: pathlib.Path
) -> None:
    from tests.harness.probe import Probe

    pusher.push_index("infra-ci", "latest", seed="probe")
    probe = Probe(tmp_path / "probe", registry.url)
    baseline = probe.run("--retry-window", "60")
    assert baseline.returncode == 0, baseline.stdout + baseline.stderr
    registry.stop()
    running = subprocess.Popen(probe.argv("--retry-window", "60"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={"PYTHONPATH": str(probe.tools_dir), "PATH": "/usr/bin:/bin"})
    try:
        time.sleep(4)  # down for longer than the three quick retries there were
        registry.start()
        stdout, stderr = running.communicate(timeout=120)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert running.returncode == 0, stdout + stderr
    report = json.loads(probe.report_path.read_text())
    assert report["ok"] is True and report["summary"]["unverified_images"] == 0
    # It did meet the outage: the refused tries are counted on top of what a quiet run sends.
    assert report["summary"]["requests"] > baseline.report["summary"]["requests"]
