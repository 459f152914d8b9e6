# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the tag-retention planner: which digests go, which tags stay and why.

The planner is pure (tags, revisions and index edges in, plan out), so most cases are plain data.
The storage cases write a real storage tree on disk and read it through the scanner's readers.
Everything that talks to a registry is tested against the real one in tests/integration.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pathlib
import time
import typing as t

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils import _tag_retention as retention
from ansible_collections.selfhosted.registry.plugins.module_utils._tag_retention import (
    RegistryDeleteClient,
    RetentionPolicy,
    StorageView,
    TagRetentionError,
    TagState,
    plan_repository,
    plan_storage,
    run_retention,
)
from tests.unit.plugins.module_utils.storage_tree import StorageTree

DAY = 86400.0
# The storage cases write tags "now" and age some of them: the planner's clock must be the real one.
NOW = float(int(time.time()))


def digest(name: str) -> str:
    """A stable, valid-looking digest per name, so plans read like the test."""
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def tags_of(**ages_in_days: t.Tuple[str, float]) -> t.Dict[str, TagState]:
    return {tag: TagState(tag, digest(target), NOW - age * DAY) for tag, (target, age) in ages_in_days.items()}


def plan(
    tags: t.Mapping[str, TagState],
    edges: t.Optional[t.Mapping[str, t.Sequence[str]]] = None,
    extra_revisions: t.Iterable[str] = (),
    **policy: t.Any,
) -> retention.RepositoryPlan:
    edges = {digest(parent): tuple(digest(child) for child in children) for parent, children in (edges or {}).items()}
    revisions = {state.digest for state in tags.values()} | set(edges) | {c for cs in edges.values() for c in cs}
    revisions |= {digest(name) for name in extra_revisions}
    policy.setdefault("min_age_days", 0)
    policy.setdefault("protected_tags", ("latest",))
    return plan_repository("app", tags, revisions, lambda d: edges.get(d, ()), RetentionPolicy(**policy), NOW)


def deleted_tags(result: retention.RepositoryPlan) -> t.Set[str]:
    return {tag for item in result.deletions for tag in item.tags}


def reasons(result: retention.RepositoryPlan) -> t.Dict[str, str]:
    return {item.tag: item.reason for item in result.kept}


# -- keeping the newest ---------------------------------------------------------------------------


def test_keeps_the_newest_n_and_deletes_the_rest_oldest_first_by_push_time() -> None:
    tags = tags_of(**{f"build-{n:02d}": (f"image-{n}", 100 - n) for n in range(15)})
    result = plan(tags, keep_newest=5)
    assert deleted_tags(result) == {f"build-{n:02d}" for n in range(10)}
    assert reasons(result) == {f"build-{n:02d}": "newest" for n in range(10, 15)}
    assert all(item.reason == "old_tags" for item in result.deletions)


def test_tag_names_do_not_decide_age_push_time_does() -> None:
    # "build-9" sorts after "build-10" by name but was pushed first.
    tags = tags_of(**{"build-9": ("a", 30), "build-10": ("b", 20), "build-11": ("c", 10)})
    result = plan(tags, keep_newest=2)
    assert deleted_tags(result) == {"build-9"}


def test_equal_push_times_give_the_same_plan_every_time() -> None:
    tags = tags_of(**{f"t{n}": (f"i{n}", 5) for n in range(6)})
    first = plan(tags, keep_newest=3)
    again = plan(dict(reversed(list(tags.items()))), keep_newest=3)
    assert deleted_tags(first) == deleted_tags(again) == {"t0", "t1", "t2"}


def test_keep_zero_deletes_every_unprotected_old_tag() -> None:
    tags = tags_of(latest=("a", 50), old=("b", 40))
    result = plan(tags, keep_newest=0)
    assert deleted_tags(result) == {"old"}
    assert reasons(result) == {"latest": "protected"}


# -- protection and age ---------------------------------------------------------------------------


def test_protected_tags_are_kept_and_do_not_use_up_the_newest_slots() -> None:
    tags = tags_of(latest=("a", 90), **{"v1.2.3": ("b", 80)}, new=("c", 1), older=("d", 2), oldest=("e", 3))
    result = plan(tags, keep_newest=2, protected_tags=("latest", "v[0-9]*.[0-9]*.[0-9]*"))
    assert reasons(result) == {"latest": "protected", "v1.2.3": "protected", "new": "newest", "older": "newest"}
    assert deleted_tags(result) == {"oldest"}


def test_default_protection_covers_latest_and_release_tags_but_not_build_tags() -> None:
    policy = RetentionPolicy()
    assert [policy.protects_tag(tag) for tag in ("latest", "1.2.3", "v10.0.1", "v1.2.3-rc1")] == [True] * 4
    assert [policy.protects_tag(tag) for tag in ("build-1234", "main-5", "sha-1a2b3c", "latest-old", "v1")] == [False] * 5


def test_a_tag_younger_than_min_age_is_never_deleted() -> None:
    tags = tags_of(a=("a", 1), b=("b", 2), c=("c", 3), d=("d", 30))
    result = plan(tags, keep_newest=1, min_age_days=7)
    assert reasons(result) == {"a": "newest", "b": "too_young", "c": "too_young"}
    assert deleted_tags(result) == {"d"}


# -- digests shared and referenced ------------------------------------------------------------------


def test_a_digest_shared_by_an_old_and_a_kept_tag_is_not_deleted() -> None:
    tags = tags_of(new=("same", 1), old=("same", 90), other=("x", 95))
    result = plan(tags, keep_newest=1)
    assert reasons(result)["old"] == "same_digest_as:new"
    assert deleted_tags(result) == {"other"}
    assert digest("same") not in {item.digest for item in result.deletions}


def test_old_build_tags_of_a_kept_index_children_are_kept() -> None:
    # The incident's own sequence: children tagged per build, the index tagged later.
    tags = tags_of(latest=("index", 1), **{"b1-amd64": ("amd64", 40), "b1-arm64": ("arm64", 40), "b0": ("z", 50)})
    result = plan(tags, {"index": ["amd64", "arm64", "attest"]}, keep_newest=0)
    assert reasons(result)["b1-amd64"] == "referenced_by_tag:latest"
    assert reasons(result)["b1-arm64"] == "referenced_by_tag:latest"
    assert deleted_tags(result) == {"b0"}
    assert {item.digest for item in result.deletions} == {digest("z")}


def test_nested_indexes_are_followed_from_a_kept_tag() -> None:
    tags = tags_of(keep=("outer", 1), inner_old=("inner", 50), leaf_old=("leaf", 60))
    result = plan(tags, {"outer": ["inner"], "inner": ["leaf"]}, keep_newest=1)
    assert reasons(result)["inner_old"] == "referenced_by_tag:keep"
    assert reasons(result)["leaf_old"] == "referenced_by_tag:keep"
    assert result.deletions == []


def test_an_untagged_index_that_stays_protects_what_it_references() -> None:
    # Pinned deployments pull indexes by digest: an untagged index is still an image someone may pull.
    tags = tags_of(old=("child", 50))
    result = plan(tags, {"pinned-index": ["child"]}, keep_newest=0)
    assert result.deletions == []
    assert reasons(result)["old"] == f"referenced_by_index:{digest('pinned-index')}"


def test_an_old_index_goes_with_its_untagged_children_but_not_with_shared_or_tagged_ones() -> None:
    tags = tags_of(
        new=("new-index", 1), old=("old-index", 50), **{"old-amd64": ("tagged-child", 50), "kept-child": ("kept", 0.5)}
    )
    edges = {
        "new-index": ["shared", "new-only"],
        "old-index": ["shared", "old-only", "tagged-child", "kept"],
    }
    result = plan(tags, edges, keep_newest=2)
    planned = {item.digest: item for item in result.deletions}
    assert set(planned) == {digest("old-index"), digest("old-only"), digest("tagged-child")}
    assert planned[digest("old-only")].reason == f"child_of:{digest('old-index')}"
    assert planned[digest("old-only")].tags == ()
    assert planned[digest("tagged-child")].tags == ("old-amd64",)
    assert reasons(result)["kept-child"] == "newest"


def test_untagged_manifests_nobody_asked_about_are_left_alone() -> None:
    tags = tags_of(old=("a", 50))
    result = plan(tags, extra_revisions=["stray"], keep_newest=0)
    assert {item.digest for item in result.deletions} == {digest("a")}


def test_an_index_is_deleted_before_anything_it_references() -> None:
    tags = tags_of(**{"z-index": ("index", 50), "a-child": ("child", 50)})
    result = plan(tags, {"index": ["child", "untagged"]}, keep_newest=0)
    order = [item.digest for item in result.deletions]
    assert order.index(digest("index")) < order.index(digest("child"))
    assert order.index(digest("index")) < order.index(digest("untagged"))
    assert result.children[digest("index")] == (digest("child"), digest("untagged"))


# -- what cannot be read stops deletion -------------------------------------------------------------


def test_an_unreadable_manifest_stops_all_deletion_in_its_repository() -> None:
    tags = tags_of(old=("a", 50), older=("b", 60), keep=("c", 1))
    revisions = {state.digest for state in tags.values()} | {digest("broken")}

    def children(target: str) -> t.Optional[t.Tuple[str, ...]]:
        return None if target == digest("broken") else ()

    result = plan_repository("app", tags, revisions, children, RetentionPolicy(1, 0, ()), NOW)
    assert result.deletions == []
    assert reasons(result) == {"keep": "newest", "old": "repository_not_readable", "older": "repository_not_readable"}
    assert len(result.problems) == 1
    assert digest("broken") in result.problems[0]
    assert "nothing is deleted" in result.problems[0]


def test_a_tag_whose_revision_is_gone_is_reported_and_left_alone() -> None:
    tags = tags_of(old=("gone", 50))
    result = plan_repository("app", tags, set(), lambda d: (), RetentionPolicy(0, 0, ()), NOW)
    assert result.deletions == []
    assert reasons(result) == {"old": "no_revision"}
    assert "has no revision link" in result.problems[0]


def test_policy_validation_names_the_bad_value() -> None:
    with pytest.raises(TagRetentionError, match="keep_newest must be 0 or more, not -1"):
        RetentionPolicy(keep_newest=-1).validate()
    with pytest.raises(TagRetentionError, match="min_age_days"):
        RetentionPolicy(min_age_days=-0.5).validate()


def test_repository_patterns_include_then_exclude() -> None:
    policy = RetentionPolicy(include_repositories=("team/*",), exclude_repositories=("team/keep-*",))
    assert policy.selects_repository("team/app")
    assert policy.selects_repository("team/app/api")  # fnmatch's * crosses "/"
    assert not policy.selects_repository("team/keep-all")
    assert not policy.selects_repository("other")


# -- through a storage tree on disk -------------------------------------------------------------------


def age(tree: StorageTree, repo: str, tag: str, days: float) -> None:
    stamp = NOW - days * DAY
    os.utime(tree.tag_link(repo, tag), (stamp, stamp))


def test_plan_from_storage_reads_push_times_and_nested_repository_names(tmp_path: pathlib.Path) -> None:
    tree = StorageTree(str(tmp_path))
    for number in range(4):
        tree.image("team/app/api", f"build-{number}", seed=str(number))
        age(tree, "team/app/api", f"build-{number}", 40 - number)
    tree.image("other", "only", seed="x")
    age(tree, "other", "only", 90)
    plans, errors = plan_storage(StorageView(str(tmp_path)), RetentionPolicy(2, 0, (), ("team/*",)), NOW)
    assert errors == []
    assert [result.repository for _directory, result in plans] == ["team/app/api"]
    (_directory, result), = plans
    assert deleted_tags(result) == {"build-0", "build-1"}


def test_a_corrupt_tag_link_stops_deletion_in_that_repository_only(tmp_path: pathlib.Path) -> None:
    tree = StorageTree(str(tmp_path))
    for repo in ("damaged", "healthy"):
        for number in range(3):
            tree.image(repo, f"b{number}", seed=f"{repo}{number}")
            age(tree, repo, f"b{number}", 30 - number)
    tree.write_file(tree.tag_link("damaged", "b2"), "sha256:NOT-A-DIGEST\n")
    plans, errors = plan_storage(StorageView(str(tmp_path)), RetentionPolicy(1, 0, ()), NOW)
    by_name = {p.repository: p for _d, p in plans}
    assert by_name["damaged"].deletions == []
    assert any("nothing is deleted in this repository" in message for message in by_name["damaged"].problems)
    assert "b2/current/link" in by_name["damaged"].problems[-1]
    assert reasons(by_name["damaged"]) == {"b1": "newest", "b0": "repository_not_readable"}
    assert deleted_tags(by_name["healthy"]) == {"b0", "b1"}


def test_a_dangling_revision_stops_deletion_in_its_repository(tmp_path: pathlib.Path) -> None:
    tree = StorageTree(str(tmp_path))
    kept = tree.image("app", "keep", seed="k")
    tree.image("app", "old", seed="o")
    age(tree, "app", "old", 30)
    tree.remove_blob(kept.digest)
    plans, _errors = plan_storage(StorageView(str(tmp_path)), RetentionPolicy(1, 0, ()), NOW)
    (_directory, result), = plans
    assert result.deletions == []
    assert kept.digest in result.problems[0]


def test_a_damaged_layer_link_does_not_stop_retention(tmp_path: pathlib.Path) -> None:
    tree = StorageTree(str(tmp_path))
    tree.image("app", "keep", seed="k")
    old = tree.image("app", "old", seed="o")
    age(tree, "app", "old", 30)
    tree.write_file(tree.layer_link("app", old.layers[0]), "garbage")
    plans, _errors = plan_storage(StorageView(str(tmp_path)), RetentionPolicy(1, 0, ()), NOW)
    (_directory, result), = plans
    assert [item.digest for item in result.deletions] == [old.digest]
    assert result.problems == []


def test_tag_push_times_notice_a_new_a_removed_and_a_re_pushed_tag(tmp_path: pathlib.Path) -> None:
    tree = StorageTree(str(tmp_path))
    image = tree.image("app", "a", seed="a")
    tree.image("app", "b", seed="b")
    age(tree, "app", "a", 3)
    age(tree, "app", "b", 2)
    view = StorageView(str(tmp_path))
    directory = tree.repo_dir("app")
    tags, _problems = view.tags(directory)
    planned = {tag: state.pushed_at for tag, state in tags.items()}
    assert view.tag_push_times(directory) == planned
    tree.tag("app", "c", image.digest)
    assert set(view.tag_push_times(directory) or {}) == {"a", "b", "c"}
    os.unlink(tree.tag_link("app", "c"))
    assert view.tag_push_times(directory) == planned
    tree.tag("app", "b", image.digest)  # re-pushed: the registry rewrites the link
    assert (view.tag_push_times(directory) or {})["b"] != planned["b"]


def test_dry_run_without_a_registry_prints_one_line_per_decision_and_changes_nothing(tmp_path: pathlib.Path) -> None:
    tree = StorageTree(str(tmp_path))
    index = tree.multiarch("app", "latest")
    tree.tag("app", "b1-amd64", index.children[0].digest)
    age(tree, "app", "b1-amd64", 30)
    old = tree.image("app", "b0", seed="old")
    age(tree, "app", "b0", 40)
    before = tree.listing()
    lines: t.List[str] = []
    result = run_retention(str(tmp_path), RetentionPolicy(0, 0, ("latest",)), None, apply=False, now=NOW, emit=lines.append)
    assert tree.listing() == before
    assert f"WOULD DELETE repo=app digest={old.digest} tags=b0 reason=old_tags" in lines
    assert "KEEP repo=app tag=b1-amd64 reason=referenced_by_tag:latest" in lines
    assert "KEEP repo=app tag=latest reason=protected" in lines
    assert lines[-1].startswith("SUMMARY dry_run=True repositories=1 planned_digests=1 planned_tags=1 deleted_digests=0")
    assert result.deleted == [] and result.errors == []
    assert not any(line.startswith("NEXT") for line in lines)


def test_applying_without_a_registry_url_is_refused(tmp_path: pathlib.Path) -> None:
    StorageTree(str(tmp_path))
    with pytest.raises(TagRetentionError, match="needs the registry URL"):
        run_retention(str(tmp_path), RetentionPolicy(), None, apply=True)


def test_a_directory_that_is_no_storage_root_is_one_sentence(tmp_path: pathlib.Path) -> None:
    (tmp_path / "unrelated.txt").write_text("not a registry", encoding="utf-8")
    with pytest.raises(TagRetentionError, match=r"holds no registry storage.*\.$"):
        StorageView(str(tmp_path))


def test_an_empty_storage_root_is_an_empty_registry_not_an_error(tmp_path: pathlib.Path) -> None:
    lines: t.List[str] = []
    result = run_retention(str(tmp_path), RetentionPolicy(), None, emit=lines.append)
    assert result.errors == [] and result.repositories == 0
    assert lines == ["SUMMARY dry_run=True repositories=0 planned_digests=0 planned_tags=0 deleted_digests=0 "
                     "deleted_tags=0 kept_tags=0 lost_tags=0 errors=0"]


# -- client and command line without a network --------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://host", "127.0.0.1:5000", "http://"])
def test_a_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(TagRetentionError, match="is not an http:// or https:// URL"):
        RegistryDeleteClient(url)


@pytest.mark.parametrize("url", ["https://user:s3cret-value@127.0.0.1:5000", "ftp://user:s3cret-value@127.0.0.1"])
def test_credentials_in_the_url_are_refused_without_repeating_them(url: str) -> None:
    with pytest.raises(TagRetentionError) as caught:
        RegistryDeleteClient(url)
    assert "s3cret-value" not in str(caught.value)


@pytest.mark.parametrize(
    "body,code",
    [
        ('{"errors":[{"code":"MANIFEST_UNKNOWN","message":"x"}]}', "MANIFEST_UNKNOWN"),
        ("<html>proxy error</html>", ""),
        ('{"errors":[{"code":"a b; rm -rf"}]}', ""),
        ('{"errors":"nope"}', ""),
        ("[]", ""),
    ],
)
def test_error_codes_are_taken_from_the_body_only_when_well_formed(body: str, code: str) -> None:
    assert retention._error_code(body) == code


def test_password_comes_from_a_file_or_the_environment_never_argv(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text("from-file\nignored\n", encoding="utf-8")
    monkeypatch.delenv("REGISTRY_USERNAME", raising=False)
    monkeypatch.setenv("REGISTRY_PASSWORD", "from-env")
    args = retention._parser().parse_args(["--storage-root", "x", "--username", "ci", "--password-file", str(secret_file)])
    assert retention._credentials(args) == ("ci", "from-file")
    args = retention._parser().parse_args(["--storage-root", "x", "--username", "ci"])
    assert retention._credentials(args) == ("ci", "from-env")
    assert not any(action.dest == "password" for action in retention._parser()._actions)


def test_a_password_without_a_user_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGISTRY_USERNAME", raising=False)
    monkeypatch.setenv("REGISTRY_PASSWORD", "from-env")
    args = retention._parser().parse_args(["--storage-root", "x"])
    with pytest.raises(TagRetentionError, match="no user name"):
        retention._credentials(args)


def test_main_writes_the_json_report_and_exits_0_on_a_clean_dry_run(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = StorageTree(str(tmp_path / "storage"))
    tree.image("app", "old", seed="o")
    age(tree, "app", "old", 30)
    report = tmp_path / "report.json"
    code = retention.main(["--storage-root", tree.root, "--keep", "0", "--min-age-days", "1", "--report", str(report)])
    assert code == 0
    written = json.loads(report.read_text(encoding="utf-8"))
    assert written["dry_run"] is True
    assert [item["tags"] for item in written["planned"]] == [["old"]]
    assert written["deleted"] == []
    assert written["policy"]["keep_newest"] == 0
    assert "WOULD DELETE repo=app" in capsys.readouterr().out


def test_main_exits_2_with_one_sentence_for_a_missing_storage_root(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = retention.main(["--storage-root", str(tmp_path / "absent")])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("error: storage root ") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err


def test_main_exits_2_and_says_so_when_the_report_cannot_be_written(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = StorageTree(str(tmp_path / "storage"))
    code = retention.main(["--storage-root", tree.root, "--report", str(tmp_path / "absent-dir" / "r.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"error: report {tmp_path / 'absent-dir' / 'r.json'} cannot be written: no such file or directory.\n"


def test_the_file_parses_as_python_3_8() -> None:
    source = pathlib.Path(retention.__file__).read_text(encoding="utf-8")
    ast.parse(source, feature_version=(3, 8))


# -- cosign signatures, attestations and SBOMs ------------------------------------------------------


def cosign(subject: str, kind: str) -> str:
    return f"sha256-{digest(subject)[7:]}.{kind}"


def tags_from(ages_in_days: t.Mapping[str, t.Tuple[str, float]]) -> t.Dict[str, TagState]:
    """tags_of for tag names that are not Python identifiers."""
    return {tag: TagState(tag, digest(target), NOW - age * DAY) for tag, (target, age) in ages_in_days.items()}


def test_cosign_tags_follow_the_digest_they_name_and_never_count_as_newest() -> None:
    tags = tags_from(
        {
            "v-new": ("new", 30),
            "v-old": ("old", 40),
            # The signatures are the newest pushes: counted as tags they would push v-new out of keep 1.
            cosign("new", "sig"): ("new-sig", 1),
            cosign("new", "att"): ("new-att", 1),
            cosign("old", "sig"): ("old-sig", 1),
            cosign("old", "sbom"): ("old-sbom", 1),
        }
    )
    result = plan(tags, keep_newest=1, protected_tags=(), min_age_days=7)
    assert reasons(result) == {
        "v-new": "newest",
        cosign("new", "sig"): f"signature_of:{digest('new')}",
        cosign("new", "att"): f"signature_of:{digest('new')}",
    }
    assert deleted_tags(result) == {"v-old", cosign("old", "sig"), cosign("old", "sbom")}
    assert {item.digest: item.reason for item in result.deletions} == {
        digest("old"): "old_tags",
        digest("old-sig"): f"signature_of:{digest('old')}",
        digest("old-sbom"): f"signature_of:{digest('old')}",
    }


def test_signature_of_an_untagged_child_of_a_kept_index_is_kept() -> None:
    tags = tags_from({"latest": ("index", 50), cosign("child", "sig"): ("child-sig", 50)})
    result = plan(tags, edges={"index": ["child"]}, keep_newest=0, protected_tags=("latest",))
    assert reasons(result)[cosign("child", "sig")] == f"signature_of:{digest('child')}"
    assert result.deletions == []


def test_signature_whose_subject_is_gone_is_deleted_only_when_old() -> None:
    tags = tags_from({cosign("gone", "sig"): ("gone-sig", 30), cosign("gone2", "att"): ("gone2-att", 1)})
    result = plan(tags, keep_newest=5, protected_tags=(), min_age_days=7)
    assert deleted_tags(result) == {cosign("gone", "sig")}
    assert reasons(result) == {cosign("gone2", "att"): "too_young"}


def test_names_that_only_look_like_cosign_tags_are_ordinary_tags() -> None:
    assert retention.cosign_subject(cosign("x", "sig")) == digest("x")
    for tag in (f"sha256-{'A' * 64}.sig", f"sha256-{'a' * 63}.sig", f"sha256-{'a' * 64}.sig2", "sha256-x.att"):
        assert retention.cosign_subject(tag) == ""
