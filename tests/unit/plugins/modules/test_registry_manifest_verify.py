# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module's argument handling, result shape and output files, over a loopback registry."""

from __future__ import annotations

import json
import pathlib
import typing as t

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.selfhosted.registry.plugins.modules import registry_manifest_verify
from tests.unit.plugins.module_utils.registry_fakes import OCI_INDEX, FakeRegistry, digest_of

SECRET = "module-test-Pa55word-never-shown"


@pytest.fixture
def fake() -> t.Iterator[FakeRegistry]:
    server = FakeRegistry().start()
    amd = server.add_image("infra-ci", [b"base", b"amd"], seed="amd")
    arm = server.add_image("infra-ci", [b"base", b"arm"], seed="arm")
    server.add_index("infra-ci", [(amd, {"platform": {"os": "linux", "architecture": "amd64"}}),
                                  (arm, {"platform": {"os": "linux", "architecture": "arm64"}})], "latest")
    server.add_image("team/app", [b"base", b"app"], tag="v1")
    yield server
    server.stop()


def run_module(args: t.Dict[str, t.Any], capsys: pytest.CaptureFixture[str]) -> t.Dict[str, t.Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        registry_manifest_verify.main()
    return json.loads(capsys.readouterr().out)


def test_healthy_images_pass(fake: FakeRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module({"registry_url": fake.url, "images": ["infra-ci:latest", "team/app:v1"]}, capsys)
    assert not result.get("failed")
    assert result["ok"] is True and result["changed"] is False
    # Blobs are per repository: "base" counts in infra-ci and in team/app. Requests: /v2/ + 4 + 8.
    assert result["summary"] == {"images": 2, "broken_images": 0, "unverified_images": 0, "not_found_images": 0, "repository_errors": 0,
                                 "manifests": 4, "blobs": 8, "requests": 13, "broken_objects": 0,
                                 "unverified_objects": 0, "foreign_layers": 0}
    assert result["images"][0]["media_type"] == OCI_INDEX
    assert [c["platform"] for c in result["images"][0]["children"]] == ["linux/amd64", "linux/arm64"]
    assert result["broken"] == []
    assert result["msg"] == "All 2 images verified (4 manifests, 8 blobs)."


def test_broken_image_fails_naming_every_broken_object(fake: FakeRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    del fake.blobs[("infra-ci", digest_of(b"base"))]
    result = run_module({"registry_url": fake.url, "images": ["infra-ci:latest", "team/app:v1"]}, capsys)
    assert result["failed"] is True and result["ok"] is False
    base = digest_of(b"base")
    assert result["msg"] == (
        f"1 of 2 images are broken: infra-ci:latest: layer blob {base} answered 404 BLOB_UNKNOWN;"
        f" infra-ci:latest: layer blob {base} answered 404 BLOB_UNKNOWN."
    )
    assert [(b["object_type"], b["digest"], b["status"], b["error_code"], len(b["chain"])) for b in result["broken"]] \
        == [("layer", base, 404, "BLOB_UNKNOWN", 4)] * 2
    assert result["summary"]["broken_objects"] == 1
    assert [i["ok"] for i in result["images"]] == [False, True]


def test_report_only_and_mirror_do_not_fail(fake: FakeRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    del fake.blobs[("team/app", digest_of(b"base"))]
    for extra in ({"fail_on_broken": False}, {"mirror": True}):
        result = run_module(dict({"registry_url": fake.url, "images": ["team/app:v1"]}, **extra), capsys)
        assert not result.get("failed") and result["ok"] is False
        assert result["broken"][0]["error_code"] == "BLOB_UNKNOWN"


def test_each_image_gets_one_verdict(fake: FakeRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    del fake.blobs[("team/app", digest_of(b"base"))]
    result = run_module({"registry_url": fake.url, "images": ["infra-ci:latest", "team/app:v1", "team/app:v9"]},
                        capsys)
    assert result["failed"] is True
    assert result["verdicts"] == {"ok": ["infra-ci:latest"], "broken": ["team/app:v1"], "unverified": [],
                                  "not_found": ["team/app:v9"]}
    assert [(i["verdict"], i["orphan_index"]) for i in result["images"]] == [
        ("ok", False), ("broken", False), ("not_found", False)]
    assert result["msg"].endswith("1 of 3 images do not exist (check the names): team/app:v9: manifest of tag v9"
                                  " answered 404 MANIFEST_UNKNOWN.")


def test_check_mode_gives_the_same_result(fake: FakeRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    del fake.blobs[("infra-ci", digest_of(b"amd"))]
    args = {"registry_url": fake.url, "images": ["infra-ci:latest"], "fail_on_broken": False}
    normal = run_module(args, capsys)
    checked = run_module(dict(args, _ansible_check_mode=True), capsys)
    for key in ("ok", "changed", "summary", "images", "broken", "msg"):
        if key == "summary":
            normal[key].pop("requests"), checked[key].pop("requests")
        assert normal[key] == checked[key], key


def test_report_and_metrics_files(fake: FakeRegistry, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    del fake.blobs[("team/app", digest_of(b"base"))]
    report, metrics = tmp_path / "verify.json", tmp_path / "verify.prom"
    result = run_module({"registry_url": fake.url, "images": ["infra-ci:latest", "team/app:v1"],
                         "report_path": str(report), "metrics_path": str(metrics), "fail_on_broken": False}, capsys)
    written = json.loads(report.read_text())
    assert written["broken"] == result["broken"] and written["summary"] == result["summary"]
    assert written["registry"] == fake.url
    assert [(k["reference"], k["carried"]) for k in written["known_broken"]] == [("team/app:v1", False)]
    text = metrics.read_text()
    host = f"127.0.0.1:{fake.port}"
    assert f'registry_verify_images{{registry="{host}"}} 2\n' in text
    assert f'registry_verify_broken_images{{registry="{host}"}} 1\n' in text
    assert f'registry_verify_image_broken{{registry="{host}",repository="team/app",tag="v1"}} 1\n' in text
    assert f'registry_verify_up{{registry="{host}"}} 1\n' in text
    assert "registry_verify_last_run_timestamp_seconds{" in text
    assert not list(tmp_path.glob(".tmp-*"))


def test_unreachable_registry_writes_up_0_and_fails_with_one_sentence(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    from tests.harness.registry import free_port

    port = free_port()
    metrics = tmp_path / "verify.prom"
    result = run_module({"registry_url": f"http://127.0.0.1:{port}", "images": ["app:v1"], "username": "reader",
                         "password": SECRET, "metrics_path": str(metrics), "timeout": 5, "retry_window": 1},
                        capsys)
    assert result["failed"] is True
    assert result["msg"] == f"Could not reach the v2 API of 127.0.0.1:{port} at 127.0.0.1:{port}: connection refused."
    assert f'registry_verify_up{{registry="127.0.0.1:{port}"}} 0' in metrics.read_text()
    assert SECRET not in json.dumps(result)
    # Not reached is never broken: the image asked for is unverified, with the reason.
    assert result["verdicts"] == {"ok": [], "broken": [], "unverified": ["app:v1"], "not_found": []}
    assert result["images"][0]["reason"] == f"app:v1: {result['msg']}"


@pytest.mark.parametrize("args, message", [
    ({"images": ["Bad Name:1"]}, "Image reference 'Bad Name:1' has an invalid repository name 'Bad Name'"),
    ({"images": ["other.example/app:1"]}, "names registry 'other.example', but the module talks to"),
    ({}, "Give the images to verify, or catalog=true to verify every tag of every repository."),
    ({"images": ["app:v1"], "catalog": True}, "Give either images or catalog=true, not both."),
    ({"images": ["app:v1"], "repositories": ["team/*"]}, "The repositories patterns only apply with catalog=true."),
    ({"images": ["app:v1"], "concurrency": 0}, "concurrency must be at least 1, not 0."),
    ({"images": ["app:v1"], "retry_window": -1}, "retry_window must be 0 or more seconds, not -1."),
    ({"images": ["app:v1"], "blob_check": "maybe"}, "value of blob_check must be one of: head, read"),
])
def test_bad_input_is_one_sentence(fake: FakeRegistry, capsys: pytest.CaptureFixture[str],
                                   args: t.Dict[str, t.Any], message: str) -> None:
    result = run_module(dict({"registry_url": fake.url}, **args), capsys)
    assert result["failed"] is True
    assert message in result["msg"]
    assert "Traceback" not in json.dumps(result)


def test_credentials_come_from_the_environment_and_never_show(
    fake: FakeRegistry, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    import base64

    from tests.unit.plugins.module_utils.registry_fakes import Reply, json_reply

    expected = "Basic " + base64.b64encode(f"reader:{SECRET}".encode()).decode()
    fake.routes["/v2/"] = lambda seen: (json_reply(200, {}) if seen.headers.get("Authorization") == expected else
                                        Reply(401, b"", {"WWW-Authenticate": 'Basic realm="r"'}))
    monkeypatch.setenv("REGISTRY_USERNAME", "reader")
    monkeypatch.setenv("REGISTRY_PASSWORD", SECRET)
    report = tmp_path / "r.json"
    result = run_module({"registry_url": fake.url, "images": ["team/app:v1"], "report_path": str(report)}, capsys)
    assert result["ok"] is True
    assert fake.requests_to("/v2/")[-1].headers["Authorization"] == expected
    monkeypatch.setenv("REGISTRY_PASSWORD", "wrong-" + SECRET)
    failed = run_module({"registry_url": fake.url, "images": ["team/app:v1"], "report_path": str(report)}, capsys)
    assert failed["msg"] == (f"Registry 127.0.0.1:{fake.port} rejected the credentials for the v2 API"
                             f" of 127.0.0.1:{fake.port}.")
    for text in (json.dumps(result), json.dumps(failed), report.read_text()):
        assert SECRET not in text


def test_retry_window_rides_out_a_registry_that_fails_for_a_while(
    fake: FakeRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.unit.plugins.module_utils.registry_fakes import json_reply, manifest_reply

    body, media_type = fake.manifests[("team/app", "v1")]
    failures = {"left": 4}

    def restarting(seen: t.Any) -> t.Any:
        # 503s in a row, more than the three retries there were, as a proxy answers while the registry restarts.
        if failures["left"]:
            failures["left"] -= 1
            return json_reply(503, {"errors": [{"code": "UNAVAILABLE"}]})
        return manifest_reply(body, media_type)

    fake.routes["/v2/team/app/manifests/v1"] = restarting
    ridden = run_module({"registry_url": fake.url, "images": ["team/app:v1"]}, capsys)
    assert ridden["ok"] is True, ridden["msg"]
    failures["left"] = 4
    given_up = run_module({"registry_url": fake.url, "images": ["team/app:v1"], "retry_window": 0}, capsys)
    assert given_up["failed"] is True and given_up["broken"] == []
    assert given_up["msg"] == (
        "Could not verify 1 images (the registry did not answer for them or refused the credentials, which is not damage):"
        " team/app:v1: manifest of tag v1 answered 503 UNAVAILABLE.")
    assert [(u["status"], u["error_code"]) for u in given_up["unverified"]] == [(503, "UNAVAILABLE")]
