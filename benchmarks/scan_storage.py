# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Storage scan against the registry's own full walk, on the same large tree, in one run.

Generates a filesystem-driver storage tree (default: 1,000 repositories x 100 manifest revisions =
100,000 revisions, a fifth of them indexes over two image children, layers shared from a common
pool, 20 tags per repository), then times, each in its own child process so peak memory
(ru_maxrss) is measured per tool:

* the scanner, exactly as the registry host runs it (``python3 -m registry_tools._registry_tools_cli scan``);
* ``docker-registry garbage-collect --dry-run <config>``: the registry's own mark phase over the tree.

Both run once untimed first so the page cache is equally warm, then ``--rounds`` timed runs each,
alternating; the best time of each is compared. Prints times, the ratio and peak memory.

    python3 benchmarks/scan_storage.py [--repositories 1000] [--revisions 100] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
TOOL_FILES = ("_storage_scan.py", "_gc_guard.py", "_report_files.py", "_cli_arguments.py", "_registry_tools_cli.py")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


class TreeWriter:
    """Writes storage files directly; directories are created once and remembered."""

    def __init__(self, root: str) -> None:
        self.v2 = os.path.join(root, "docker", "registry", "v2")
        self.made: t.Set[str] = set()
        self.blobs: t.Set[str] = set()
        self.files = 0

    def _write(self, path: str, data: bytes) -> None:
        directory = os.path.dirname(path)
        if directory not in self.made:
            os.makedirs(directory, exist_ok=True)
            self.made.add(directory)
        with open(path, "wb") as handle:
            handle.write(data)
        self.files += 1

    def blob(self, data: bytes) -> str:
        hex_digest = hashlib.sha256(data).hexdigest()
        if hex_digest not in self.blobs:
            self.blobs.add(hex_digest)
            self._write(os.path.join(self.v2, "blobs", "sha256", hex_digest[:2], hex_digest, "data"), data)
        return "sha256:" + hex_digest

    def link(self, repo: str, kind: str, digest: str) -> None:
        parts = ("_layers",) if kind == "layer" else ("_manifests", "revisions")
        self._write(os.path.join(self.v2, "repositories", repo, *parts, "sha256", digest[7:], "link"), digest.encode())

    def tag(self, repo: str, tag: str, digest: str) -> None:
        tag_dir = os.path.join(self.v2, "repositories", repo, "_manifests", "tags", tag)
        self._write(os.path.join(tag_dir, "current", "link"), digest.encode())
        self._write(os.path.join(tag_dir, "index", "sha256", digest[7:], "link"), digest.encode())


def generate(root: str, repositories: int, revisions: int, tags: int) -> t.Dict[str, int]:
    writer = TreeWriter(root)
    # A shared pool of base layers (small bodies: the walk's cost is in files, not bytes).
    pool = [writer.blob(f"base layer {number}".encode() * 16) for number in range(2000)]
    manifest_count = 0
    for repo_number in range(repositories):
        # Nested names, as teams use them.
        repo = f"team{repo_number % 50}/app{repo_number}"
        configs = []
        for number in range(10):
            config = json.dumps({"architecture": "amd64", "os": "linux", "repo": repo, "n": number}).encode()
            digest = writer.blob(config)
            writer.link(repo, "layer", digest)
            configs.append((digest, len(config)))
        own_layers = [pool[(repo_number * 7 + k) % len(pool)] for k in range(20)]
        for digest in own_layers:
            writer.link(repo, "layer", digest)
        roots: t.List[str] = []
        images_in_repo = 0
        children_pending: t.List[t.Tuple[str, int]] = []
        for number in range(revisions):
            if number % 5 == 4 and len(children_pending) >= 2:
                # Every fifth revision is an index over the two images before it.
                entries = [
                    {"mediaType": OCI_MANIFEST, "digest": digest, "size": size,
                     "platform": {"architecture": arch, "os": "linux"}}
                    for (digest, size), arch in zip(children_pending[-2:], ("amd64", "arm64"))
                ]
                body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
                digest = writer.blob(body)
                writer.link(repo, "revision", digest)
                roots.append(digest)
                children_pending = []
            else:
                config_digest, config_size = configs[images_in_repo % len(configs)]
                layers = [own_layers[(images_in_repo + k) % len(own_layers)] for k in range(3)]
                manifest = {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
                    "layers": [{"mediaType": OCI_LAYER, "digest": layer, "size": 512} for layer in layers],
                    "annotations": {"org.opencontainers.image.revision": f"{repo}-{number}"},
                }
                body = json.dumps(manifest).encode()
                digest = writer.blob(body)
                writer.link(repo, "revision", digest)
                children_pending.append((digest, len(body)))
                roots.append(digest)
                images_in_repo += 1
            manifest_count += 1
        for number in range(tags):
            writer.tag(repo, f"build-{number}", roots[-1 - number * 3 % len(roots)])
    return {"revisions": manifest_count, "repositories": repositories, "blobs": len(writer.blobs), "files": writer.files}


def run_measured(argv: t.Sequence[str], cwd: t.Optional[str] = None) -> t.Tuple[float, int, int, str]:
    """Run argv; return (seconds, exit status, peak RSS in KiB of that child alone, output tail)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(list(argv), cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
        status, usage = os.wait4(process.pid, 0)[1:]
        elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        # Only the tail: reading the collector's whole output (one line per object) would raise this
        # process's peak RSS, and Linux hands a parent's peak to every child it starts afterwards.
        size = output.seek(0, os.SEEK_END)
        output.seek(max(0, size - 600))
        tail = output.read().decode("utf-8", "replace")
    return elapsed, process.returncode, usage.ru_maxrss, tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repositories", type=int, default=1000)
    parser.add_argument("--revisions", type=int, default=100, help="per repository")
    parser.add_argument("--tags", type=int, default=20, help="per repository")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--registry", default="docker-registry")
    parser.add_argument("--python", default="python3", help="interpreter for the scanner (the host's python3)")
    parser.add_argument("--keep", help="generate into (or reuse) this directory and keep it")
    parser.add_argument("--generate-into", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.generate_into:
        started = time.perf_counter()
        stats = generate(arguments.generate_into, arguments.repositories, arguments.revisions, arguments.tags)
        print(
            f"generated {stats['revisions']} revisions in {stats['repositories']} repositories, "
            f"{stats['blobs']} blobs, {stats['files']} files in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
        return 0

    if shutil.which(arguments.registry) is None:
        print(f"ERROR {arguments.registry} not found: the benchmark needs the registry binary", file=sys.stderr)
        return 2
    workdir = arguments.keep or tempfile.mkdtemp(prefix="scan-bench-")
    try:
        storage = os.path.join(workdir, "storage")
        if not os.path.isdir(os.path.join(storage, "docker")):
            # Generated in a child: Linux carries a parent's peak RSS into children it forks, so this
            # process must stay small for the per-child ru_maxrss figures below to mean anything.
            subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--generate-into", storage,
                 "--repositories", str(arguments.repositories), "--revisions", str(arguments.revisions),
                 "--tags", str(arguments.tags)],
                check=True,
            )
        else:
            print(f"reusing the tree in {storage}")
        package = os.path.join(workdir, "pkg", "registry_tools")
        os.makedirs(package, exist_ok=True)
        for name in TOOL_FILES:
            shutil.copy(os.path.join(REPO_ROOT, "plugins", "module_utils", name), package)
        open(os.path.join(package, "__init__.py"), "w").close()
        config = os.path.join(workdir, "config.yml")
        with open(config, "w") as handle:
            handle.write(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n"
                         "  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n")

        scanner = [arguments.python, "-m", "registry_tools._registry_tools_cli", "scan", "--storage-root", storage]
        collector = [arguments.registry, "garbage-collect", "--dry-run", config]
        cwd = os.path.dirname(package)
        results: t.Dict[str, t.List[t.Tuple[float, int, int, str]]] = {"scanner": [], "gc": []}
        floor = run_measured(["/bin/true"])[2]
        print(f"peak RSS floor inherited by a child of this process: {floor / 1024:.1f} MiB", flush=True)
        # Untimed warm-up of both, so neither pays for a cold page cache.
        for name, argv in (("scanner", scanner), ("gc", collector)):
            elapsed, status, _rss, tail = run_measured(argv, cwd)
            print(f"warm-up {name}: {elapsed:.2f}s exit {status}", flush=True)
            if status != 0:
                print(f"ERROR {name} failed on the generated tree:\n{tail}", file=sys.stderr)
                return 2
        for _round in range(arguments.rounds):
            for name, argv in (("scanner", scanner), ("gc", collector)):
                results[name].append(run_measured(argv, cwd))
        best = {name: min(runs, key=lambda run: run[0]) for name, runs in results.items()}
        peak = {name: max(run[2] for run in runs) for name, runs in results.items()}
        print(f"scanner summary: {best['scanner'][3].strip().splitlines()[-1]}")
        print(f"storage scanner (python3 -m registry_tools._registry_tools_cli scan): "
              f"{best['scanner'][0]:.2f}s, peak RSS {peak['scanner'] / 1024:.1f} MiB")
        print(f"docker-registry garbage-collect --dry-run:                         "
              f"{best['gc'][0]:.2f}s, peak RSS {peak['gc'] / 1024:.1f} MiB")
        ratio = best["scanner"][0] / best["gc"][0]
        print(f"ratio scanner/gc time: {ratio:.2f} ({'faster' if ratio < 1 else 'slower'} than the registry's walk)")
        print(f"all runs scanner: {', '.join(f'{run[0]:.2f}s' for run in results['scanner'])}; "
              f"gc: {', '.join(f'{run[0]:.2f}s' for run in results['gc'])}")
        within = peak["scanner"] / 1024 < 300
        print(f"goal: scanner no slower than gc ({'met' if ratio <= 1 else 'NOT met'}), "
              f"under 300 MiB ({'met' if within else 'NOT met'})")
        return 0
    finally:
        if not arguments.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
