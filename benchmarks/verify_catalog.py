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
and the log is also searched for any object this collection requested twice.

    python3 benchmarks/verify_catalog.py [--indexes 200] [--images 320] [--concurrency 8]
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
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / ".cache" / "collections")]

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


def access_requests(log_path: pathlib.Path, start: int, end: t.Optional[int] = None) -> t.List[t.Tuple[str, str, str]]:
    """(method, uri, user agent) of every request the registry completed between two log offsets."""
    with log_path.open("rb") as log:
        log.seek(start)
        data = log.read((end - start) if end is not None else -1).decode("utf-8", "replace")
    return [match.groups() for match in map(ACCESS_LINE.search, data.splitlines()) if match]


def fill(server: t.Any, indexes: int, images: int) -> t.Tuple[int, str]:
    """Push the content with a few parallel pushers; return the tag count and the broken reference."""
    from tests.harness.images import ImagePusher, make_layer

    bases = [make_layer(f"benchmark base layer {n}\n" * 50) for n in range(8)]

    def push_repository(number: int) -> t.List[t.Any]:
        pusher = ImagePusher(server)
        pushed = []
        try:
            for position in range(number, indexes, 20):
                pushed.append(pusher.push_index(f"team{number % 4}/svc{number}", f"build-{position}",
                                                shared_layers=[bases[position % 8]], seed=f"i{position}"))
            for position in range(number, images, 20):
                pushed.append(pusher.push_image(
                    f"tools/app{number}", f"v{position}", seed=f"s{position}",
                    layers=[bases[position % 8], make_layer(f"app {position}\n")],
                    fmt="docker" if position % 2 else "oci"))
        finally:
            pusher.session.close()
        return pushed

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        everything = [item for batch in pool.map(push_repository, range(20)) for item in batch]
    # Break one index the way an API delete does: the child answers 404 at once, the tag still resolves.
    victim = next(item for item in everything if hasattr(item, "children"))
    pusher = ImagePusher(server)
    response = pusher.delete_manifest(victim.repository, victim.children[0].digest)
    pusher.session.close()
    if response.status_code != 202:
        raise SystemExit(f"could not delete a child to break {victim.repository}:{victim.tag}: {response.status_code}")
    return len(everything), f"{victim.repository}:{victim.tag}"


def walk_in_this_process(url: str, concurrency: int, blob_check: str, trace: bool) -> t.Dict[str, t.Any]:
    """The measured side: what the module does, in a process of its own."""
    import tracemalloc

    from ansible_collections.selfhosted.registry.plugins.module_utils._manifest_walk import ManifestWalker
    from ansible_collections.selfhosted.registry.plugins.module_utils._registry_client import RegistryClient

    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    with RegistryClient(url, pool_size=concurrency) as client:
        result = ManifestWalker(client, concurrency=concurrency, blob_check=blob_check).verify_catalog()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--indexes", type=int, default=200, help="multi-arch index tags (default 200)")
    parser.add_argument("--images", type=int, default=320, help="single-image tags (default 320)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--blob-check", choices=["head", "read"], default="head")
    parser.add_argument("--walk", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.walk:
        print(json.dumps(walk_in_this_process(args.walk, args.concurrency, args.blob_check, args.trace)))
        return 0

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

        run_walk(server.url, args.concurrency, args.blob_check)  # warm the registry's caches for both sides
        log = server.log_path
        mark = log.stat().st_size
        registry_cpu_before = process_cpu_seconds(server.pid)
        walk = run_walk(server.url, args.concurrency, args.blob_check)
        time.sleep(0.5)  # the registry writes its access line just after the response
        registry_cpu = process_cpu_seconds(server.pid) - registry_cpu_before
        middle = log.stat().st_size
        runbook_seconds, runbook_output = run_runbook(server.host)
        time.sleep(0.5)
        walk_log = access_requests(log, mark, middle)
        runbook_log = access_requests(log, middle)
        traced = run_walk(server.url, args.concurrency, args.blob_check, trace=True)
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)

    repeated = [key for key, count in collections.Counter(entry[:2] for entry in walk_log).items() if count > 1]
    runbook_broken = [line for line in runbook_output.splitlines() if line.startswith("BROKEN")]
    ratio = runbook_seconds / walk["seconds"]
    print()
    print(f"tags in the catalog           {walk['images']}")
    print(f"this collection ({args.blob_check})      {walk['seconds']:8.2f} s   {len(walk_log):6d} HTTP requests"
          f" (client counted {walk['requests']})   {walk['manifests']} manifests + {walk['blobs']} blobs checked")
    print(f"runbook (skopeo + curl -I)    {runbook_seconds:8.2f} s   {len(runbook_log):6d} HTTP requests"
          f"   manifests only, no configs or layers")
    print(f"ratio                         {ratio:8.1f}x faster")
    walk_objects = walk["manifests"] + walk["blobs"]
    runbook_objects = walk["manifests"]  # every tag and every child manifest, nothing below them
    per_object = (runbook_seconds / runbook_objects) / (walk["seconds"] / walk_objects)
    print(f"per object checked            {walk['seconds'] / walk_objects * 1000:8.1f} ms walk,"
          f" {runbook_seconds / runbook_objects * 1000:.1f} ms runbook ({per_object:.1f}x)")
    # The registry's own CPU for the walk bounds it from below, whatever the client costs.
    floor = registry_cpu / (os.cpu_count() or 1)
    print(f"registry CPU for the walk     {registry_cpu:8.2f} s ({registry_cpu / max(len(walk_log), 1) * 1000:.2f} ms a request):"
          f" on {os.cpu_count()} cores the walk cannot beat {floor:.2f} s, {runbook_seconds / max(floor, 1e-9):.1f}x this runbook run")
    print(f"objects requested twice       {len(repeated)}")
    print(f"peak memory of the walk       {walk['peak_rss_mb']:.1f} MB RSS (whole process),"
          f" {traced['tracemalloc_peak_mb']:.1f} MB Python heap peak (tracemalloc, separate run)")
    print(f"broken found: this collection {walk['broken_images']}; runbook {len(runbook_broken)} line(s): "
          + "; ".join(runbook_broken[:3]))
    goals = {"20x faster": ratio >= 20, "no object twice": not repeated, "under 150 MB": walk["peak_rss_mb"] < 150,
             "both found the break": bool(runbook_broken) and walk["broken_images"] == [victim]}
    print("goals: " + ", ".join(f"{name} {'met' if met else 'NOT met'}" for name, met in goals.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
