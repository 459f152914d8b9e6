# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tag retention against the real registry 2.8.2 and its real garbage collector.

Tag ages are set through the mtime of each tag's current link, which is what the registry writes
on every push. "Still pulls" always means: the manifest by tag with every manifest type in Accept,
its digest checked, every child manifest, and a first byte of every config and layer, on a
registry restarted after the GC (so its blob-descriptor cache cannot hide a deleted blob).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import time
import typing as t

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils import _tag_retention as retention
from ansible_collections.selfhosted.registry.plugins.module_utils._tag_retention import (
    RegistryDeleteClient,
    RetentionPolicy,
    TagRetentionError,
    run_retention,
)
from tests.harness.images import ImagePusher, make_layer
from tests.harness.registry import RegistryServer

MODULE_UTILS = pathlib.Path(retention.__file__).resolve().parent
# What the role copies to the registry host for this tool: the tool and the stdlib files it imports.
PACKAGED_FILES = ("_tag_retention.py", "_storage_scan.py", "_report_files.py")
SYSTEM_PYTHON = "/usr/bin/python3"
DAY = 86400.0


# -- helpers ------------------------------------------------------------------------------------------


def set_age(registry: RegistryServer, repository: str, tag: str, days: float) -> None:
    link = registry.tree / "repositories" / repository / "_manifests" / "tags" / tag / "current" / "link"
    stamp = time.time() - days * DAY
    os.utime(link, (stamp, stamp))


def assert_pulls(pusher: ImagePusher, repository: str, reference: str) -> int:
    """Pull like a client would; returns how many manifests and blobs were fetched."""
    response = pusher.get_manifest(repository, reference)
    assert response.status_code == 200, f"{repository}:{reference} answered {response.status_code}"
    digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
    assert response.headers.get("Docker-Content-Digest") == digest
    if reference.startswith("sha256:"):
        assert digest == reference
    document = json.loads(response.content)
    fetched = 1
    if "manifests" in document:
        for child in document["manifests"]:
            fetched += assert_pulls(pusher, repository, child["digest"])
        return fetched
    for blob in [document["config"]] + document["layers"]:
        status = pusher.blob_status(repository, blob["digest"])
        assert status == 200, f"{repository}@{blob['digest']} (in {reference}) answered {status}"
        fetched += 1
    return fetched


def plain_gc(registry: RegistryServer) -> None:
    """What the GC guard does after retention: registry stopped, plain GC, restart."""
    registry.stop()
    result = registry.garbage_collect()
    registry.start()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def storage_listing(registry: RegistryServer) -> t.List[t.Tuple[str, int, int]]:
    rows = []
    for directory, dirs, files in os.walk(registry.storage_root):
        for name in sorted(dirs + files):
            path = os.path.join(directory, name)
            info = os.lstat(path)
            rows.append((os.path.relpath(path, registry.storage_root), info.st_size, info.st_mtime_ns))
    return sorted(rows)


def tag_dirs(registry: RegistryServer, repository: str) -> t.Set[str]:
    return set(os.listdir(registry.tree / "repositories" / repository / "_manifests" / "tags"))


def run(registry: RegistryServer, apply: bool = True, **policy: t.Any) -> t.Tuple[retention.RetentionResult, t.List[str]]:
    lines: t.List[str] = []
    policy.setdefault("min_age_days", 1)
    result = run_retention(
        str(registry.storage_root),
        RetentionPolicy(**policy),
        RegistryDeleteClient(registry.url, registry.username, registry.password, str(registry.ca_path or "") or None),
        apply=apply,
        emit=lines.append,
    )
    return result, lines


@pytest.fixture
def tools_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """The stdlib files copied into a plain package, as on the registry host."""
    package = tmp_path / "host" / "registry_tools"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    for name in PACKAGED_FILES:
        shutil.copy(MODULE_UTILS / name, package / name)
    return package.parent


def run_cli(tools: pathlib.Path, *args: str, env: t.Optional[t.Mapping[str, str]] = None) -> subprocess.CompletedProcess[str]:
    # A bare environment: the collection is not importable, only the copied package is.
    return subprocess.run(
        [SYSTEM_PYTHON, "-m", "registry_tools._tag_retention", *args],
        cwd=tools,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# -- keeping the newest -------------------------------------------------------------------------------


def test_fifteen_tags_keep_five_deletes_the_ten_oldest_and_the_rest_still_pulls(
    registry: RegistryServer, pusher: ImagePusher
) -> None:
    images = {}
    for number in range(15):
        tag = f"build-{number:02d}"
        images[tag] = pusher.push_image("team/app", tag, seed=str(number))
        set_age(registry, "team/app", tag, 40 - number)
    result, lines = run(registry, keep_newest=5)

    newest = {f"build-{number:02d}" for number in range(10, 15)}
    oldest = set(images) - newest
    assert result.errors == []
    assert set(pusher.list_tags("team/app")) == newest
    assert tag_dirs(registry, "team/app") == newest
    assert {tag for item in result.deleted for tag in item.tags} == oldest
    assert sum(line.startswith("DELETE repo=team/app ") for line in lines) == 10
    assert sum(line.startswith("KEEP repo=team/app ") and line.endswith("reason=newest") for line in lines) == 5
    assert any(line.startswith("NEXT ") and "never --delete-untagged" in line for line in lines)

    plain_gc(registry)
    for tag in newest:
        assert assert_pulls(pusher, "team/app", tag) == 3
    for tag in oldest:
        assert pusher.get_manifest("team/app", images[tag].digest).status_code == 404
        # Each old image had its own layer and config: the GC reclaimed them.
        assert pusher.blob_status("team/app", images[tag].layer_digests[0]) == 404


def test_the_incident_sequence_keeps_old_child_build_tags_of_a_kept_index(
    registry: RegistryServer, pusher: ImagePusher
) -> None:
    # Children tagged per build, then the index; the build tags age, newer builds come.
    index = pusher.push_index(
        "infra-ci", "latest", fmt="oci", attestations=True, child_tags=["build-1-amd64", "build-1-arm64"], seed="1"
    )
    for tag in ("build-1-amd64", "build-1-arm64"):
        set_age(registry, "infra-ci", tag, 30)
    set_age(registry, "infra-ci", "latest", 30)
    for number in range(2, 5):
        pusher.push_image("infra-ci", f"build-{number}", seed=str(number))
        set_age(registry, "infra-ci", f"build-{number}", 20 - number)

    result, lines = run(registry, keep_newest=1)

    assert "KEEP repo=infra-ci tag=build-1-amd64 reason=referenced_by_tag:latest" in lines
    assert "KEEP repo=infra-ci tag=build-1-arm64 reason=referenced_by_tag:latest" in lines
    assert {tag for item in result.deleted for tag in item.tags} == {"build-2", "build-3"}
    plain_gc(registry)
    # The index, both platforms and both attestations, every config and layer.
    assert assert_pulls(pusher, "infra-ci", "latest") == 1 + 4 * 3
    for child in index.children:
        assert pusher.get_manifest("infra-ci", child.digest).status_code == 200
    assert assert_pulls(pusher, "infra-ci", "build-1-amd64") == 3


def test_old_index_goes_with_its_untagged_children_and_gc_reclaims_them(
    registry: RegistryServer, pusher: ImagePusher
) -> None:
    shared = make_layer("base layer shared by every build\n")
    old = pusher.push_index("app", "build-1", shared_layers=[shared], seed="old")
    new = pusher.push_index("app", "build-2", shared_layers=[shared], seed="new")
    set_age(registry, "app", "build-1", 30)
    set_age(registry, "app", "build-2", 20)

    result, _lines = run(registry, keep_newest=1)

    assert {item.digest for item in result.deleted} == {old.digest} | {child.digest for child in old.children}
    assert result.deleted[0].digest == old.digest  # the index first, so no half-deleted index is ever visible
    plain_gc(registry)
    # index; two platforms with config, shared and own layer; two attestations with config and statement
    assert assert_pulls(pusher, "app", "build-2") == 1 + 2 * 4 + 2 * 3
    for child in old.children:
        assert pusher.get_manifest("app", child.digest).status_code == 404
        assert pusher.blob_status("app", child.config_digest) == 404
    assert pusher.blob_status("app", new.children[0].layer_digests[0]) == 200  # the shared layer


def test_a_digest_shared_by_an_old_and_a_new_tag_is_not_deleted(registry: RegistryServer, pusher: ImagePusher) -> None:
    image = pusher.push_image("app", "nightly-2026-01-01", seed="same")
    again = pusher.push_image("app", "nightly-2026-03-01", seed="same")
    assert again.digest == image.digest
    other = pusher.push_image("app", "nightly-2025-12-01", seed="other")
    set_age(registry, "app", "nightly-2026-01-01", 60)
    set_age(registry, "app", "nightly-2025-12-01", 90)

    result, lines = run(registry, keep_newest=1)

    assert "KEEP repo=app tag=nightly-2026-01-01 reason=same_digest_as:nightly-2026-03-01" in lines
    assert [item.digest for item in result.deleted] == [other.digest]
    plain_gc(registry)
    assert assert_pulls(pusher, "app", "nightly-2026-01-01") == 3
    assert assert_pulls(pusher, "app", "nightly-2026-03-01") == 3


def test_deleting_in_one_repository_leaves_the_same_image_in_another_intact(
    registry: RegistryServer, pusher: ImagePusher
) -> None:
    # Same content, two repositories: one manifest digest, one set of blobs, two revision links.
    layer = make_layer("the same layer in both repositories\n")
    in_old = pusher.push_image("ci/old", "build-1", seed="shared", layers=[layer])
    in_kept = pusher.push_image("ci/kept", "build-1", seed="shared", layers=[layer])
    assert in_old.digest == in_kept.digest
    set_age(registry, "ci/old", "build-1", 30)
    set_age(registry, "ci/kept", "build-1", 30)

    result, _lines = run(registry, keep_newest=0, exclude_repositories=("ci/kept",))

    assert [(item.repository, item.digest) for item in result.deleted] == [("ci/old", in_old.digest)]
    plain_gc(registry)
    assert pusher.get_manifest("ci/old", in_old.digest).status_code == 404
    assert assert_pulls(pusher, "ci/kept", "build-1") == 3


def test_protected_patterns_and_young_tags_survive_keep_zero(registry: RegistryServer, pusher: ImagePusher) -> None:
    for tag in ("latest", "v1.2.3", "release-7", "build-9", "build-10"):
        pusher.push_image("app", tag, seed=tag)
        set_age(registry, "app", tag, 100)
    pusher.push_image("app", "build-11", seed="young")  # pushed just now

    result, lines = run(registry, keep_newest=0, min_age_days=7, protected_tags=("latest", "v*", "release-*"))

    assert set(pusher.list_tags("app")) == {"latest", "v1.2.3", "release-7", "build-11"}
    assert "KEEP repo=app tag=build-11 reason=too_young" in lines
    assert "KEEP repo=app tag=release-7 reason=protected" in lines
    assert {tag for item in result.deleted for tag in item.tags} == {"build-9", "build-10"}


def test_repository_patterns_limit_what_is_touched(registry: RegistryServer, pusher: ImagePusher) -> None:
    for repository in ("team/a", "team/b", "other"):
        pusher.push_image(repository, "old", seed=repository)
        set_age(registry, repository, "old", 50)
    result, _lines = run(registry, keep_newest=0, include_repositories=("team/*",), exclude_repositories=("team/b",))
    assert [(item.repository, item.tags) for item in result.deleted] == [("team/a", ("old",))]
    assert pusher.list_tags("team/b") == ["old"] and pusher.list_tags("other") == ["old"]


# -- nothing happens unless asked ------------------------------------------------------------------------


def test_dry_run_deletes_nothing_and_changes_no_file(registry: RegistryServer, pusher: ImagePusher) -> None:
    for number in range(6):
        pusher.push_image("app", f"build-{number}", seed=str(number))
        set_age(registry, "app", f"build-{number}", 30 - number)
    pusher.push_index("app", "latest", child_tags=["c-amd64", "c-arm64"])
    before = storage_listing(registry)

    result, lines = run(registry, apply=False, keep_newest=2)

    assert storage_listing(registry) == before
    # The two child tags were pushed last, so they are the newest two; every build tag is planned.
    assert result.dry_run and result.deleted == [] and len(result.planned) == 6
    assert sum(line.startswith("WOULD DELETE repo=app ") for line in lines) == 6
    assert not any(line.startswith("DELETE ") for line in lines)
    assert len(pusher.list_tags("app")) == 9


def test_tags_pushed_after_planning_stop_that_repository(registry: RegistryServer, pusher: ImagePusher) -> None:
    old = pusher.push_image("app", "old", seed="old")
    set_age(registry, "app", "old", 50)
    pusher.push_image("app", "new", seed="new")
    pushed: t.List[str] = []

    def push_during_run(line: str) -> None:
        # The plan is made; before anything is deleted, CI tags the planned digest anew.
        if line.startswith("KEEP") and not pushed:
            pusher.tag("app", "rebuilt", old.manifest_bytes, old.media_type)
            pushed.append("rebuilt")

    result = run_retention(
        str(registry.storage_root),
        RetentionPolicy(keep_newest=1, min_age_days=1, protected_tags=()),
        RegistryDeleteClient(registry.url),
        apply=True,
        emit=push_during_run,
    )
    assert pushed
    assert result.deleted == []
    assert any("tags changed since the plan was made" in message for message in result.errors)
    assert assert_pulls(pusher, "app", "rebuilt") == 3


# -- the old method against this one, side by side -----------------------------------------------------------


def _incident_content(registry: RegistryServer, pusher: ImagePusher) -> None:
    pusher.push_index("infra-ci", "latest", child_tags=["build-1-amd64", "build-1-arm64"], seed="1")
    for tag in ("build-1-amd64", "build-1-arm64", "latest"):
        set_age(registry, "infra-ci", tag, 30)
    for number in range(2, 6):
        pusher.push_image("infra-ci", f"build-{number}", seed=str(number))
        set_age(registry, "infra-ci", f"build-{number}", 20 - number)


def test_rm_rf_and_gc_m_break_the_kept_index_where_retention_and_plain_gc_do_not(
    make_registry: t.Callable[..., RegistryServer], make_pusher: t.Callable[..., ImagePusher]
) -> None:
    old_way, new_way = make_registry(), make_registry()
    old_pusher, new_pusher = make_pusher(old_way), make_pusher(new_way)
    _incident_content(old_way, old_pusher)
    _incident_content(new_way, new_pusher)

    # The old daily job: remove tag directories older than a week, except latest, then gc -m.
    tags_root = old_way.tree / "repositories" / "infra-ci" / "_manifests" / "tags"
    for tag in os.listdir(tags_root):
        if tag != "latest" and time.time() - os.lstat(tags_root / tag / "current" / "link").st_mtime > 7 * DAY:
            shutil.rmtree(tags_root / tag)
    old_way.stop()
    gc_result = old_way.garbage_collect(delete_untagged=True)
    old_way.start()
    assert gc_result.returncode == 0, gc_result.stderr[-2000:]

    result, _lines = run(new_way, keep_newest=0, min_age_days=7, protected_tags=("latest",))
    assert result.errors == []
    plain_gc(new_way)

    # Both removed the same old builds...
    assert set(old_pusher.list_tags("infra-ci")) == {"latest"}
    assert set(new_pusher.list_tags("infra-ci")) == {"latest", "build-1-amd64", "build-1-arm64"}
    for number in range(2, 6):
        assert old_pusher.get_manifest("infra-ci", f"build-{number}").status_code == 404
        assert new_pusher.get_manifest("infra-ci", f"build-{number}").status_code == 404
    # ...but only one registry can still pull latest.
    assert old_pusher.get_manifest("infra-ci", "latest").status_code == 200
    with pytest.raises(AssertionError, match="answered 404"):
        assert_pulls(old_pusher, "infra-ci", "latest")
    assert assert_pulls(new_pusher, "infra-ci", "latest") == 13


# -- the command line on the registry host, auth, TLS, refusals ---------------------------------------------


def test_packaged_cli_with_system_python_applies_with_a_password_file_and_writes_the_report(
    registry_basic: RegistryServer, make_pusher: t.Callable[..., ImagePusher], tools_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    pusher = make_pusher(registry_basic)
    for number in range(4):
        pusher.push_image("app", f"build-{number}", seed=str(number))
        set_age(registry_basic, "app", f"build-{number}", 30 - number)
    password_file = tmp_path / "registry-password"
    password_file.write_text(str(registry_basic.password) + "\n", encoding="utf-8")
    password_file.chmod(0o600)
    report = tmp_path / "retention.json"

    completed = run_cli(
        tools_dir,
        "--storage-root", str(registry_basic.storage_root),
        "--registry-url", registry_basic.url,
        "--username", str(registry_basic.username),
        "--password-file", str(password_file),
        "--keep", "2",
        "--report", str(report),
        "--apply",
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    deleted_lines = [line for line in completed.stdout.splitlines() if line.startswith("DELETE ")]
    assert len(deleted_lines) == 2 and all(" tags=build-0 " in line or " tags=build-1 " in line for line in deleted_lines)
    assert set(pusher.list_tags("app")) == {"build-2", "build-3"}
    written = json.loads(report.read_text(encoding="utf-8"))
    assert written["summary"]["deleted_tags"] == 2 and written["dry_run"] is False and written["ok"] is True
    assert "never --delete-untagged" in written["next_step"]
    everything = completed.stdout + completed.stderr + report.read_text(encoding="utf-8")
    assert str(registry_basic.password) not in everything


def test_packaged_cli_dry_run_is_the_default(registry: RegistryServer, pusher: ImagePusher, tools_dir: pathlib.Path) -> None:
    pusher.push_image("app", "old", seed="old")
    set_age(registry, "app", "old", 30)
    completed = run_cli(tools_dir, "--storage-root", str(registry.storage_root), "--registry-url", registry.url, "--keep", "0")
    assert completed.returncode == 0, completed.stderr
    assert "WOULD DELETE repo=app " in completed.stdout
    assert pusher.list_tags("app") == ["old"]


def test_wrong_credentials_are_one_sentence_exit_2_and_never_echo_a_password(
    registry_basic: RegistryServer, make_pusher: t.Callable[..., ImagePusher], tools_dir: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    pusher = make_pusher(registry_basic)
    pusher.push_image("app", "old", seed="old")
    set_age(registry_basic, "app", "old", 30)
    wrong = "Wr0ng-" + str(registry_basic.password)[::-1]
    for apply in ((), ("--apply",)):
        completed = run_cli(
            tools_dir,
            "--storage-root", str(registry_basic.storage_root),
            "--registry-url", registry_basic.url,
            "--keep", "0",
            "--report", str(tmp_path / "report.json"),
            *apply,
            env={"REGISTRY_USERNAME": str(registry_basic.username), "REGISTRY_PASSWORD": wrong},
        )
        report_text = (tmp_path / "report.json").read_text(encoding="utf-8")
        report = json.loads(report_text)
        assert report["ok"] is False and report["errors"] == [completed.stderr[len("error: "):].strip()]
        assert wrong not in report_text and str(registry_basic.password) not in report_text
        assert completed.returncode == 2
        assert completed.stderr == (
            f"error: registry {registry_basic.url} rejected user '{registry_basic.username}' (401); check the credentials.\n"
        )
        assert "Traceback" not in completed.stdout + completed.stderr
        assert wrong not in completed.stdout + completed.stderr
        assert str(registry_basic.password) not in completed.stdout + completed.stderr
    assert pusher.list_tags("app") == ["old"]


def test_anonymous_access_to_a_protected_registry_is_refused_in_one_sentence(registry_basic: RegistryServer) -> None:
    with pytest.raises(TagRetentionError, match=r"rejected anonymous access \(401\)"):
        RegistryDeleteClient(registry_basic.url).check_access()


def test_a_token_auth_registry_is_refused_in_one_sentence(registry_token: RegistryServer) -> None:
    client = RegistryDeleteClient(registry_token.url, registry_token.username, registry_token.password)
    with pytest.raises(TagRetentionError, match=r"asks for token authentication \(401\), which tag retention does not support"):
        client.check_access()


def test_a_registry_with_deletes_disabled_stops_the_run_after_one_refusal(
    make_registry: t.Callable[..., RegistryServer], make_pusher: t.Callable[..., ImagePusher]
) -> None:
    registry = make_registry(config_overrides={"storage": {"delete": {"enabled": False}}})
    pusher = make_pusher(registry)
    for repository in ("a", "b"):
        for number in range(2):
            pusher.push_image(repository, f"old-{number}", seed=f"{repository}{number}")
            set_age(registry, repository, f"old-{number}", 30)
    result, lines = run(registry, keep_newest=0)
    assert result.deleted == []
    assert result.errors == [
        f"registry {registry.url} refuses deletes (405 UNSUPPORTED): set storage.delete.enabled to true in its config."
    ]
    assert sum(line.startswith("ERROR ") for line in lines) == 1
    assert sorted(pusher.list_tags("a")) == ["old-0", "old-1"]


def test_tls_is_verified_by_default_and_a_ca_file_makes_it_work(
    registry_tls: RegistryServer, make_pusher: t.Callable[..., ImagePusher]
) -> None:
    pusher = make_pusher(registry_tls)
    pusher.push_image("app", "old", seed="old")
    set_age(registry_tls, "app", "old", 30)
    with pytest.raises(TagRetentionError, match="presented a certificate that does not verify"):
        RegistryDeleteClient(registry_tls.url).check_access()
    result, _lines = run(registry_tls, keep_newest=0)
    assert [item.tags for item in result.deleted] == [("old",)]


def test_an_unreachable_registry_is_one_sentence() -> None:
    from tests.harness.registry import free_port

    with pytest.raises(TagRetentionError, match=r"^registry http://127\.0\.0\.1:\d+ is unreachable while checking access: .*\.$"):
        RegistryDeleteClient(f"http://127.0.0.1:{free_port()}", timeout=5).check_access()


def test_a_tag_pushed_to_a_digest_while_it_is_deleted_is_reported_lost(
    registry: RegistryServer, pusher: ImagePusher
) -> None:
    """A rollback pushes 'stable' to an old digest between the last check and the DELETE: the registry
    removes 'stable' with the digest, and the run must say so."""
    old = pusher.push_image("app", "old", seed="old")
    set_age(registry, "app", "old", 50)
    pusher.push_image("app", "stable", seed="stable")
    pusher.push_image("app", "other-old", seed="other-old")
    set_age(registry, "app", "other-old", 40)

    class RacingClient(RegistryDeleteClient):
        def delete_manifest(self, repository: str, digest: str) -> None:
            if digest == old.digest:
                pusher.tag("app", "stable", old.manifest_bytes, old.media_type)
            super().delete_manifest(repository, digest)

    lines: t.List[str] = []
    result = run_retention(
        str(registry.storage_root),
        RetentionPolicy(keep_newest=1, min_age_days=1, protected_tags=("stable",)),
        RacingClient(registry.url),
        apply=True,
        emit=lines.append,
    )
    assert [item.digest for item in result.deleted] == [old.digest]
    assert [(item.tag, item.digest) for item in result.lost_tags] == [("stable", old.digest)]
    assert f"SIDE EFFECT repo=app tag=stable digest={old.digest}" in lines
    assert any("app:stable was removed together with" in error for error in result.errors)
    # The repository's remaining deletions were skipped: other-old is still there.
    assert assert_pulls(pusher, "app", "other-old") == 3
    assert pusher.get_manifest("app", "stable").status_code == 404


def test_cosign_signatures_follow_their_image_on_the_real_registry(
    registry: RegistryServer, pusher: ImagePusher
) -> None:
    kept = pusher.push_image("app", "v2", seed="v2")
    gone = pusher.push_image("app", "v1", seed="v1")
    set_age(registry, "app", "v1", 30)
    set_age(registry, "app", "v2", 20)
    signatures = {}
    for subject in (kept, gone):
        for kind in ("sig", "att"):
            tag = f"sha256-{subject.digest[7:]}.{kind}"
            signatures[tag] = pusher.push_image("app", tag, seed=f"{tag}")
            set_age(registry, "app", tag, 10)
    result, _lines = run(registry, keep_newest=1, protected_tags=())
    assert result.errors == []
    deleted = {tag for item in result.deleted for tag in item.tags}
    assert deleted == {"v1", f"sha256-{gone.digest[7:]}.sig", f"sha256-{gone.digest[7:]}.att"}
    assert set(pusher.list_tags("app")) == {"v2", f"sha256-{kept.digest[7:]}.sig", f"sha256-{kept.digest[7:]}.att"}
    for tag in pusher.list_tags("app"):
        assert assert_pulls(pusher, "app", tag) == 3


def test_a_certificate_that_fails_with_a_ca_file_given_names_that_file(
    registry_tls: RegistryServer, tmp_path: pathlib.Path
) -> None:
    from tests.harness.tls import make_self_signed

    other_ca = make_self_signed(tmp_path, "some other CA", "other-ca")
    with pytest.raises(TagRetentionError) as raised:
        RegistryDeleteClient(registry_tls.url, ca_file=str(other_ca.cert_path)).check_access()
    message = str(raised.value)
    assert "give its CA file" not in message
    assert f"check that CA file {other_ca.cert_path} signed it and that it names the URL's host 127.0.0.1." in message
