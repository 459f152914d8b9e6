# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make demo`: the incident on a throwaway registry, the verifier's diagnosis, and the loop that heals it.

Starts the real registry on 127.0.0.1 (tests/harness), pushes a multi-arch image, verifies it,
breaks it exactly as the nightly job did (registry stopped, `garbage-collect --delete-untagged`,
registry started), then verifies again with ansible-playbook, which must fail naming exactly the
child manifests the garbage collector removed. Then the loop heals it: Alertmanager's notification
posted to the shipped rulebook (ansible-rulebook; where Java or the rulebook is missing, the phase
playbooks in order), which diagnoses, decides, rebuilds through CI (the tests' Woodpecker stand-in,
whose pipeline pushes the image again) and verifies. Exits 0 only when the image verifies again.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.harness.eda import EDA_BIN, JAVA_HOME, alertmanager_notification, post_notification, start_rulebook  # noqa: E402
from tests.harness.images import ImagePusher, make_layer  # noqa: E402
from tests.harness.registry import RegistryServer, start_registry  # noqa: E402
from tests.harness.woodpecker_server import FakeWoodpecker, PlayedPipeline  # noqa: E402

PLAYBOOK = REPO_ROOT / "scripts" / "demo_verify.yml"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run_verify(registry_url: str, report: pathlib.Path, cache: pathlib.Path) -> tuple[int, dict]:
    report.unlink(missing_ok=True)
    env = dict(os.environ)
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(REPO_ROOT / ".cache" / "collections"))
    env.update({"ANSIBLE_CALLBACK_RESULT_FORMAT": "yaml", "ANSIBLE_LOCALHOST_WARNING": "false",
                "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false", "ANSIBLE_PYTHON_INTERPRETER": sys.executable})
    extra_vars = {"demo_registry_url": registry_url, "demo_report_path": str(report), "demo_cache_path": str(cache)}
    process = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         str(PLAYBOOK), "-e", json.dumps(extra_vars)],
        env=env, check=False,
    )
    return process.returncode, json.loads(report.read_text()) if report.exists() else {}


def main() -> int:
    started = time.monotonic()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="registry-demo-"))
    say("Starting a throwaway registry (Debian's docker-registry 2.8.2) on loopback")
    server = start_registry(workdir, "anonymous")
    try:
        print(f"    {server.url}  pid {server.pid}  storage {server.storage_root}")

        say("Pushing infra-ci:latest: an OCI index over linux/amd64 and linux/arm64, with build attestations")
        pusher = ImagePusher(server)
        base = make_layer("infra-ci base layer\n" * 100)
        base_image = pusher.push_image("infra-ci", "base", layers=[base], seed="base")
        index = pusher.push_index("infra-ci", "latest", shared_layers=[base], seed="demo")
        print(f"    infra-ci:latest -> {index.digest}")
        for child in index.children:
            kind = "attestation" if child.is_attestation else "image      "
            print(f"      {kind} {child.platform:16} {child.digest}  (untagged, only the index points to it)")

        say("Verifying while it is healthy (the verifier remembers every manifest it reads)")
        code, report = run_verify(server.url, workdir / "healthy.json", workdir / "manifests")
        if code != 0 or not report.get("ok"):
            print("demo: the healthy image did not verify; see the output above", file=sys.stderr)
            return 1

        say("The nightly job: registry stopped, `garbage-collect --delete-untagged`, registry started")
        server.stop()
        gc = server.garbage_collect(delete_untagged=True)
        server.start()
        summary = [line for line in gc.stdout.splitlines() if "eligible for deletion" in line and "marked" in line]
        print(f"    garbage-collect exited {gc.returncode}: {summary[0] if summary else gc.stdout.strip()[-200:]}")
        tag_status = pusher.get_manifest("infra-ci", "latest").status_code
        child_status = pusher.get_manifest("infra-ci", index.children[0].digest).status_code
        print(f"    the tag still answers {tag_status}; its first child answers {child_status}:"
              " pipelines fail with \"image can't be pulled\"")

        say("Verifying again: the task fails and names every broken object with its chain from the tag")
        code, report = run_verify(server.url, workdir / "broken.json", workdir / "manifests")
        named = {item["digest"] for item in report.get("broken", [])}
        missing_children = {child.digest for child in index.children}
        expected = missing_children | (set(index.blob_digests) - set(base_image.blob_digests))
        if code == 0 or named != expected:
            print(f"demo: expected the verification to fail naming {sorted(expected)}, got {sorted(named)}",
                  file=sys.stderr)
            return 1
        say(f"Diagnosis shown as expected: infra-ci:latest resolves, all {len(missing_children)} of its child"
            f" manifests answer 404 MANIFEST_UNKNOWN and the {len(expected) - len(missing_children)} configs and"
            " layers only they used answer 404 BLOB_UNKNOWN; infra-ci:base (sharing the base layer) is intact.")
        print("    The same check runs from a playbook, a cron probe (report_path, metrics_path) or CI.")

        if not heal(server, pusher, base, workdir):
            return 1
        code, report = run_verify(server.url, workdir / "healed.json", workdir / "manifests")
        if code != 0 or not report.get("ok"):
            print("demo: the image does not verify after the loop; see the output above", file=sys.stderr)
            return 1
        say("Healed: infra-ci:latest verifies end to end again (every child, config and layer).")
        print(f"    Demo took {time.monotonic() - started:.0f} s.")
        return 0
    finally:
        server.close()  # stopped by PID
        shutil.rmtree(workdir, ignore_errors=True)


def heal(server: RegistryServer, pusher: ImagePusher, base: bytes, workdir: pathlib.Path) -> bool:
    """The loop: the notification to the rulebook, or the phase playbooks in order; prints the timeline."""
    started = time.monotonic()
    timeline: list[tuple[float, str]] = []

    def mark(what: str) -> None:
        timeline.append((time.monotonic() - started, what))

    def ci_push() -> None:
        mark("CI pipeline started by rebuild_ci: pushing infra-ci:latest again")
        ImagePusher(server, check_existing=True).push_index("infra-ci", "latest", shared_layers=[base], seed="rebuilt")

    state = workdir / "heal"
    token = "demo-" + os.urandom(8).hex()
    with FakeWoodpecker() as ci:
        ci.add_user(token)
        repo_id = ci.add_repo("ops", "infra-ci", push=[token])
        ci.plan(repo_id, ["pending", "running"])
        inventory = workdir / "inventory.yml"
        inventory.write_text(json.dumps({"all": {
            "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}},
            "children": {"registry_vm": {"hosts": {"registry-vm": {
                "ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"}}}},
            "vars": {"registry_url": server.url, "registry_storage_root": str(server.storage_root),
                     "woodpecker_url": ci.url, "rebuild_poll_interval": 0.2, "verify_run_probe": False,
                     "rebuild_pipelines": {"infra-ci": {"repo": "ops/infra-ci", "branch": "main"}},
                     "heal_auto_rebuild": True, "heal_state_dir": str(state)}}}))  # JSON is YAML
        env = {"WOODPECKER_TOKEN": token, "ANSIBLE_PYTHON_INTERPRETER": sys.executable}
        with PlayedPipeline(ci, repo_id, ci_push) as pipeline:
            rulebook_here = (EDA_BIN / "ansible-rulebook").exists() and pathlib.Path(JAVA_HOME, "bin", "java").exists()
            if rulebook_here and not os.environ.get("DEMO_WITHOUT_RULEBOOK"):
                say("The loop: Alertmanager's notification -> the shipped rulebook (diagnose, guard rails,"
                    " rebuild through CI, verify)")
                rulebook = start_rulebook(workdir, "selfhosted.registry.registry_heal", inventory, token, env)
                try:
                    mark("rulebook listening (ansible-rulebook, Java 17)")
                    post_notification(rulebook, alertmanager_notification("firing", "demo"))
                    mark("RegistryManifestIntegrityFailure firing: notification posted")
                    deadline = time.monotonic() + 300
                    while time.monotonic() < deadline and not _verified(rulebook.log_path):
                        time.sleep(0.5)
                    mark("verify finished")
                finally:
                    rulebook.stop()
                for line in (state / "decisions.jsonl").read_text().splitlines() if (state / "decisions.jsonl").exists() else []:
                    decision = json.loads(line)
                    print(f"    decision: {decision['decision']} {', '.join(decision['images'])} ({decision['reason']})")
            else:
                say("The loop without Java: the phase playbooks in order (diagnose, rebuild_ci, verify)")
                for playbook, extra in (("diagnose", {"registry_images": "infra-ci:latest", "diagnose_fail_when_broken": False}),
                                        ("rebuild_ci", {"registry_images": "infra-ci:latest"}),
                                        ("verify", {"registry_images": "infra-ci:latest", "registry_blob_check": "read"})):
                    subprocess.run([str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
                                    str(REPO_ROOT / "playbooks" / f"{playbook}.yml"), "-e", json.dumps(extra)],
                                   env={**os.environ, **env}, check=False, stdout=subprocess.DEVNULL)
                    mark(f"{playbook}.yml finished")
    if pipeline.error is not None:
        print(f"demo: the CI pipeline was not played: {pipeline.error}", file=sys.stderr)
        return False
    say("Timeline of the loop (seconds from the diagnosis):")
    for when, what in sorted(timeline):
        print(f"    {when:5.1f}  {what}")
    return True


def _verified(log: pathlib.Path) -> bool:
    """The rulebook's verify step has printed its verdict line."""
    return log.exists() and "image(s) checked" in log.read_text(errors="replace")


if __name__ == "__main__":
    sys.exit(main())
