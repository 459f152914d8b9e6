# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whole-catalog verification: this collection's walk against the runbook's shell loop, in one run.

Starts the real registry (tests/harness) on loopback, pushes multi-arch OCI indexes (two platforms and
two attestations each) and single images sharing base layers (``--indexes`` + ``--images`` tags, 520
by default), breaks one index the way an API delete does (a child deleted by digest), then verifies
the whole catalog twice:

* this collection: ``ManifestWalker.verify_catalog`` (index, children, configs, layers; HEAD on blobs),
  in its own child process so its peak memory (ru_maxrss) and tracemalloc peak are its own;
* the runbook: catalog and tag lists with curl, per tag ``skopeo inspect --raw``, then ``curl -I`` on
  each child digest. It checks less (no configs, no layers) and is timed as written.

HTTP requests are counted for each from the registry's own access log ("response completed" lines),
and the log is also searched for any object this collection requested twice. Around the walk: its own
CPU (client CPU per request) and the registry's (/proc/<pid>/stat), which sets the floor no client can
beat on this machine's cores and is what one probe run costs the registry.

``--scale`` leaves the runbook out and walks two catalogs of the same shape instead: the default one and
one 20 times larger (10,400 tags), each written straight into a storage tree (pushing 10,400 tags
takes too long) and served by a fresh real registry, then prints the growth of time per object.

    python3 benchmarks/verify_catalog.py [--indexes 200] [--images 320] [--concurrency 8] [--scale]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import pathlib
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import typing as t

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / ".cache" / "collections"), str(HERE)]

from scan_storage import TreeWriter  # noqa: E402  the one storage-tree writer of the benchmarks

PROBE_INTERVAL_MINUTES = 15  # registry_probe_interval_minutes' default
SCALE = 20  # --scale: 20 times the default catalog, 10,400 tags

ACCESS_LINE = re.compile(
    r'msg="response completed".* http\.request\.method=(\S+) .*http\.request\.uri="?([^"\s]+)"?'
    r'.* http\.request\.useragent="?([^"]*?)"? http\.response'
)

RUNBOOK = textwrap.dedent(r"""
    # The runbook's check, as an operator runs it: every tag, skopeo for the manifest, curl for each child.
    set -u
    reg="http://$HOST"
    accept="application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json"
    accept="$accept,application/vnd.docker.distribution.manifest.list.v2+json"
    accept="$accept,application/vnd.docker.distribution.manifest.v2+json"
    broken=0
    for repo in $(curl -s "$reg/v2/_catalog?n=1000" | jq -r '.repositories[]'); do
      for tag in $(curl -s "$reg/v2/$repo/tags/list" | jq -r '.tags // [] | .[]'); do
        if ! raw=$(skopeo inspect --raw --tls-verify=false "docker://$HOST/$repo:$tag" 2>/dev/null); then
          echo "BROKEN $repo:$tag"; broken=$((broken + 1)); continue
        fi
        for digest in $(echo "$raw" | jq -r '.manifests[]?.digest'); do
          code=$(curl -s -o /dev/null -w '%{http_code}' -I -H "Accept: $accept" "$reg/v2/$repo/manifests/$digest")
          if [ "$code" != 200 ]; then echo "BROKEN $repo:$tag $digest $code"; broken=$((broken + 1)); fi
        done
      done
    done
    echo "broken objects: $broken"
""")


def access_requests(log_path: pathlib.Path, start: int, end: t.Optional[int] = None) -> t.Counter[t.Tuple[str, str]]:
    """How often the registry completed each (method, uri) between two log offsets, read line by line."""
    counts: t.Counter[t.Tuple[str, str]] = collections.Counter()
    with log_path.open("rb") as log:
        log.seek(start)
        remaining = (end - start) if end is not None else None
        for raw in log:
            if remaining is not None:
                if remaining <= 0:
                    break
                remaining -= len(raw)
            match = ACCESS_LINE.search(raw.decode("utf-8", "replace"))
            if match:
                counts[match.group(1, 2)] += 1
    return counts


def disk_pusher(server: t.Any, writer: TreeWriter) -> t.Any:
    """The harness's ImagePusher, writing blobs, links and tags straight into a registry storage tree.

    The pusher builds the same manifests, configs and layers as for a push, without HTTP: 10,000 tags
    take many minutes to push and seconds to write. The real registry serves the tree afterwards.
    """
    from tests.harness.images import ImagePusher

    class DiskPusher(ImagePusher):
        def push_blob(self, repository: str, data: bytes) -> str:
            digest = writer.blob(data)
            writer.link(repository, "layer", digest)
            return digest

        def put_manifest(self, repository: str, reference: str, manifest_bytes: bytes, media_type: str) -> str:
            digest = writer.blob(manifest_bytes)
            writer.link(repository, "revision", digest)
            if reference != digest:
                writer.tag(repository, reference, digest)
            return digest

    return DiskPusher(server)


def populate(new_pusher: t.Callable[[], t.Any], indexes: int, images: int, groups: int, workers: int) -> t.List[t.Any]:
    """Indexes in ``groups`` repositories and single images in as many others, sharing eight base layers.

    A scaled catalog keeps the tags per repository of the default one, so both have the same shape.
    """
    from tests.harness.images import make_layer

    bases = [make_layer(f"benchmark base layer {n}\n" * 50) for n in range(8)]

    def push_repository(number: int) -> t.List[t.Any]:
        pusher = new_pusher()
        pushed = []
        try:
            for position in range(number, indexes, groups):
                pushed.append(pusher.push_index(f"team{number % 4}/svc{number}", f"build-{position}",
                                                shared_layers=[bases[position % 8]], seed=f"i{position}"))
            for position in range(number, images, groups):
                pushed.append(pusher.push_image(
                    f"tools/app{number}", f"v{position}", seed=f"s{position}",
                    layers=[bases[position % 8], make_layer(f"app {position}\n")],
                    fmt="docker" if position % 2 else "oci"))
        finally:
            pusher.session.close()
        return pushed

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return [item for batch in pool.map(push_repository, range(groups)) for item in batch]


def break_one(server: t.Any, repository: str, tag: str, child: str) -> str:
    """Break an index the way an API delete does: the child answers 404 at once, the tag still resolves."""
    from tests.harness.images import ImagePusher

    pusher = ImagePusher(server)
    response = pusher.delete_manifest(repository, child)
    pusher.session.close()
    if response.status_code != 202:
        raise SystemExit(f"could not delete a child to break {repository}:{tag}: {response.status_code}")
    return f"{repository}:{tag}"


def fill(server: t.Any, indexes: int, images: int) -> t.Tuple[int, str]:
    """Push the content through the registry's API; return the tag count and the reference broken on purpose."""
    from tests.harness.images import ImagePusher

    everything = populate(lambda: ImagePusher(server), indexes, images, groups=20, workers=4)
    victim = next(item for item in everything if hasattr(item, "children"))
    return len(everything), break_one(server, victim.repository, victim.tag, victim.children[0].digest)


def generate_in_this_process(storage_root: str, indexes: int, images: int, groups: int) -> t.Dict[str, t.Any]:
    """Write the catalog into a storage tree (in a child process: this one's memory is not the walk's)."""
    import types

    writer = TreeWriter(storage_root)
    # ImagePusher wants a server to talk to; the disk pusher never talks.
    offline = types.SimpleNamespace(username=None, password=None, verify=True, auth="anonymous", generation=0)
    # Writing files is bound by this process's CPU: threads would not help.
    everything = populate(lambda: disk_pusher(offline, writer), indexes, images, groups, workers=1)
    victim = next(item for item in everything if hasattr(item, "children"))
    return {"tags": len(everything), "repository": victim.repository, "tag": victim.tag,
            "child": victim.children[0].digest, "blobs": len(writer.blobs), "files": writer.files}


def walk_in_this_process(url: str, concurrency: int, blob_check: str, trace: bool) -> t.Dict[str, t.Any]:
    """The measured side: what the module does, in a process of its own."""
    import tracemalloc

    from ansible_collections.selfhosted.registry.plugins.module_utils._manifest_walk import ManifestWalker
    from ansible_collections.selfhosted.registry.plugins.module_utils._registry_client import RegistryClient

    if trace:
        tracemalloc.start()
    cpu_before = os.times()
    started = time.perf_counter()
    with RegistryClient(url, pool_size=concurrency) as client:
        result = ManifestWalker(client, concurrency=concurrency, blob_check=blob_check).verify_catalog()
    seconds = time.perf_counter() - started
    cpu_after = os.times()
    return {
        "seconds": seconds,
        # This process's CPU for the walk alone (interpreter start and imports left out), user and kernel.
        "cpu_seconds": (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system),
        "images": result.summary.images,
        "manifests": result.summary.manifests,
        "blobs": result.summary.blobs,
        "requests": result.summary.requests,
        "broken_images": sorted({b.reference for b in result.broken}),
        "broken_objects": result.summary.broken_objects,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tracemalloc_peak_mb": tracemalloc.get_traced_memory()[1] / 1048576 if trace else None,
    }


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_walk(url: str, concurrency: int, blob_check: str, trace: bool = False) -> t.Dict[str, t.Any]:
    command = [sys.executable, os.path.abspath(__file__), "--walk", url, "--concurrency", str(concurrency), "--blob-check", blob_check]
    if trace:
        command.append("--trace")
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def run_runbook(host: str) -> t.Tuple[float, str]:
    started = time.perf_counter()
    process = subprocess.run(["bash", "-c", RUNBOOK], capture_output=True, text=True, env=dict(os.environ, HOST=host),
                             check=False)
    return time.perf_counter() - started, process.stdout


def measure(server: t.Any, concurrency: int, blob_check: str) -> t.Dict[str, t.Any]:
    """A warm-up walk (the registry's caches, equal for every side), then the measured one.

    Around the measured walk: the registry's CPU (/proc/<pid>/stat) and its access log, which counts the
    requests it completed and finds any object asked for twice.
    """
    run_walk(server.url, concurrency, blob_check)
    mark = server.log_path.stat().st_size
    registry_cpu_before = process_cpu_seconds(server.pid)
    walk = run_walk(server.url, concurrency, blob_check)
    time.sleep(0.5)  # the registry writes its access line just after the response
    walk["registry_cpu"] = process_cpu_seconds(server.pid) - registry_cpu_before
    walk["log_end"] = server.log_path.stat().st_size
    served = access_requests(server.log_path, mark, walk["log_end"])
    walk["served"] = sum(served.values())
    walk["repeated"] = sum(1 for count in served.values() if count > 1)
    walk["objects"] = walk["manifests"] + walk["blobs"]
    # The registry's own CPU bounds the walk from below, however cheap the client is.
    walk["floor"] = walk["registry_cpu"] / (os.cpu_count() or 1)
    return walk


def report(walk: t.Dict[str, t.Any], label: str) -> None:
    """The walk's figures: time, requests, CPU on both sides, the floor, memory, the probe's load."""
    seconds, served = walk["seconds"], max(walk["served"], 1)
    print(f"{label:30s}{seconds:8.2f} s   {walk['served']:6d} HTTP requests (client counted {walk['requests']}),"
          f" {walk['served'] / seconds:.0f} a second   {walk['manifests']} manifests + {walk['blobs']} blobs checked,"
          f" {seconds / walk['objects'] * 1000:.2f} ms an object")
    print(f"client CPU of the walk        {walk['cpu_seconds']:8.2f} s"
          f" ({walk['cpu_seconds'] / max(walk['requests'], 1) * 1000:.3f} ms a request sent)")
    print(f"registry CPU for the walk     {walk['registry_cpu']:8.2f} s ({walk['registry_cpu'] / served * 1000:.3f} ms a request):"
          f" on {os.cpu_count()} cores the walk cannot beat {walk['floor']:.2f} s; it took {seconds / max(walk['floor'], 1e-9):.2f}x that")
    interval = PROBE_INTERVAL_MINUTES * 60
    print(f"registry CPU per probe run    {walk['registry_cpu']:8.2f} s for {walk['images']} tags"
          f" ({walk['registry_cpu'] / max(walk['images'], 1) * 1000:.2f} ms a tag):"
          f" {walk['registry_cpu'] / interval * 100:.2f}% of one core every {PROBE_INTERVAL_MINUTES} minutes")
    print(f"objects requested twice       {walk['repeated']}")
    traced = walk.get("tracemalloc_peak_mb")
    print(f"peak memory of the walk       {walk['peak_rss_mb']:.1f} MB RSS (whole process)"
          + (f", {traced:.1f} MB Python heap peak (tracemalloc, separate run)" if traced else ""))


def runbook_comparison(args: argparse.Namespace) -> int:
    """The default mode: push the catalog, walk it, run the runbook's loop on it, compare."""
    from tests.harness.registry import start_registry

    for tool in ("skopeo", "curl", "jq"):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode != 0:
            raise SystemExit(f"{tool} is needed for the runbook side (scripts/bootstrap installs it)")
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="verify-catalog-bench-"))
    server = start_registry(workdir, "anonymous")
    try:
        print(f"registry {server.url} (pid {server.pid}); pushing {args.indexes} indexes and {args.images} images ...")
        pushed_at = time.perf_counter()
        tags, victim = fill(server, args.indexes, args.images)
        print(f"pushed {tags} tags in {time.perf_counter() - pushed_at:.1f} s; broken on purpose: {victim}")
        walk = measure(server, args.concurrency, args.blob_check)
        runbook_seconds, runbook_output = run_runbook(server.host)
        time.sleep(0.5)
        runbook_requests = sum(access_requests(server.log_path, walk["log_end"]).values())
        traced = run_walk(server.url, args.concurrency, args.blob_check, trace=True)
        walk["tracemalloc_peak_mb"] = traced["tracemalloc_peak_mb"]
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)

    runbook_broken = [line for line in runbook_output.splitlines() if line.startswith("BROKEN")]
    ratio = runbook_seconds / walk["seconds"]
    print()
    print(f"tags in the catalog           {walk['images']}")
    report(walk, f"this collection ({args.blob_check})")
    print(f"runbook (skopeo + curl -I)    {runbook_seconds:8.2f} s   {runbook_requests:6d} HTTP requests"
          f"   manifests only, no configs or layers")
    print(f"ratio                         {ratio:8.1f}x faster;"
          f" the registry's CPU for the walk caps it at {runbook_seconds / max(walk['floor'], 1e-9):.1f}x on this run")
    runbook_objects = walk["manifests"]  # every tag and every child manifest, nothing below them
    per_object = (runbook_seconds / runbook_objects) / (walk["seconds"] / walk["objects"])
    print(f"per object checked            {walk['seconds'] / walk['objects'] * 1000:8.1f} ms walk,"
          f" {runbook_seconds / runbook_objects * 1000:.1f} ms runbook ({per_object:.1f}x)")
    print(f"broken found: this collection {walk['broken_images']}; runbook {len(runbook_broken)} line(s): "
          + "; ".join(runbook_broken[:3]))
    goals = {"20x faster": ratio >= 20, "within 1.3x of the registry's floor": walk["seconds"] <= 1.3 * walk["floor"],
             "no object twice": not walk["repeated"], "under 150 MB": walk["peak_rss_mb"] < 150,
             "both found the break": bool(runbook_broken) and walk["broken_images"] == [victim]}
    print("goals: " + ", ".join(f"{name} {'met' if met else 'NOT met'}" for name, met in goals.items()))
    return 0


def scale_comparison(args: argparse.Namespace) -> int:
    """--scale: the default catalog and one SCALE times larger, same shape, written to disk, each served
    by a fresh real registry and walked the same way; time per object should not grow with the catalog."""
    from tests.harness.registry import start_registry

    runs = []
    for factor in (1, SCALE):
        workdir = pathlib.Path(tempfile.mkdtemp(prefix="verify-catalog-scale-"))
        try:
            started = time.perf_counter()
            storage = workdir / "storage"
            generated = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--generate-into", str(storage),
                 "--indexes", str(args.indexes * factor), "--images", str(args.images * factor),
                 "--groups", str(20 * factor)],
                capture_output=True, text=True, check=True).stdout
            made = json.loads(generated.strip().splitlines()[-1])
            server = start_registry(workdir, "anonymous")
            try:
                victim = break_one(server, made["repository"], made["tag"], made["child"])
                print(f"wrote {made['tags']} tags ({made['blobs']} blobs, {made['files']} files) in"
                      f" {time.perf_counter() - started:.1f} s; registry {server.url} (pid {server.pid});"
                      f" broken on purpose: {victim}", flush=True)
                walk = measure(server, args.concurrency, args.blob_check)
            finally:
                server.close()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        walk["victim"] = victim
        runs.append(walk)
        print()
        print(f"tags in the catalog           {walk['images']}")
        report(walk, f"this collection ({args.blob_check})")
        print(f"broken found                  {walk['broken_images']}", flush=True)
        print()

    small, large = runs
    growth = (large["seconds"] / large["objects"]) / (small["seconds"] / small["objects"])
    print(f"time per object, {large['images']} tags against {small['images']}: {growth:.2f}x"
          f" ({large['seconds'] / large['objects'] * 1000:.2f} ms and {small['seconds'] / small['objects'] * 1000:.2f} ms)")
    goals = {"no object twice": not (small["repeated"] or large["repeated"]),
             "under 150 MB": large["peak_rss_mb"] < 150,
             "time per object grows under 1.2x": growth < 1.2,
             f"within 1.3x of the registry's floor at {large['images']} tags": large["seconds"] <= 1.3 * large["floor"],
             "the break found": all(run["broken_images"] == [run["victim"]] for run in runs)}
    print("goals: " + ", ".join(f"{name} {'met' if met else 'NOT met'}" for name, met in goals.items()))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--indexes", type=int, default=200, help="multi-arch index tags (default 200)")
    parser.add_argument("--images", type=int, default=320, help="single-image tags (default 320)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--blob-check", choices=["head", "read"], default="head")
    parser.add_argument("--scale", action="store_true",
                        help=f"walk the catalog and one {SCALE} times larger (written to disk, no runbook side)")
    parser.add_argument("--walk", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--generate-into", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--groups", type=int, default=20, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.walk:
        print(json.dumps(walk_in_this_process(args.walk, args.concurrency, args.blob_check, args.trace)))
        return 0
    if args.generate_into:
        print(json.dumps(generate_in_this_process(args.generate_into, args.indexes, args.images, args.groups)))
        return 0
    return scale_comparison(args) if args.scale else runbook_comparison(args)


if __name__ == "__main__":
    sys.exit(main())
