# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore against the rebuild path, for the same incident, in one run.

Two real registries (Debian's docker-registry 2.8.2, through tests/harness) get the same images: multi-arch
OCI indexes with attestations and layers of realistic size. A backup of the first is copied with `cp -a`,
then the real `garbage-collect --delete-untagged` breaks both the same way.

* restore: ``run_restore`` (what the registry_restore module runs) from the backup, with the registry
  stopped while the files are placed and started again afterwards (both counted);
* the rebuild path's floor: the CI push of the same images to the second registry over the API, every
  blob and manifest, as a pipeline's push step does after its build. The build itself, the pipeline's
  queueing and the new digests it makes are left out, so a real rebuild only takes longer.

Both end verified over the API (every child, config and layer read). Prints objects, bytes, seconds, ratio.

    .venv/bin/python benchmarks/restore_vs_rebuild.py [--images 4] [--layer-mib 8]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / ".cache" / "collections"))

from ansible_collections.selfhosted.registry.plugins.module_utils._restore import (  # noqa: E402
    RestoreOptions,
    run_restore,
)
from ansible_collections.selfhosted.registry.plugins.module_utils._restore_sources import StorageSource  # noqa: E402
from tests.harness.images import ImagePusher  # noqa: E402
from tests.harness.registry import start_registry  # noqa: E402


def _layer(seed: str, mib: int) -> bytes:
    """Incompressible bytes of the given size (a layer is compressed already)."""
    block = hashlib.sha256(seed.encode()).digest()
    out = bytearray()
    while len(out) < mib * 1048576:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[: mib * 1048576])


def _push_all(pusher: ImagePusher, count: int, mib: int) -> list:
    indexes = []
    for number in range(count):
        base = _layer(f"base-{number}", mib)
        indexes.append(pusher.push_index(f"app{number}", "latest", attestations=True, shared_layers=[base],
                                         seed=f"bench-{number}-{mib}"))
    return indexes


def _break(server) -> None:
    server.stop()
    result = server.garbage_collect(delete_untagged=True)
    server.start()
    if result.returncode != 0:
        raise SystemExit(f"garbage-collect failed: {result.stderr[-500:]}")


def _unserved(pusher: ImagePusher, indexes: list) -> int:
    failing = 0
    for index in indexes:
        for child in index.children:
            failing += pusher.get_manifest(index.repository, child.digest).status_code != 200
            for digest in child.blob_digests:
                response = pusher.repo_request("GET", index.repository, f"blobs/{digest}")
                failing += response.status_code != 200 or hashlib.sha256(response.content).hexdigest() != digest[7:]
    return failing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--images", type=int, default=4, help="multi-arch indexes broken by the GC")
    parser.add_argument("--layer-mib", type=int, default=8, help="size of each layer in MiB")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-restore-") as workdir:
        restored = start_registry(pathlib.Path(workdir) / "restored")
        rebuilt = start_registry(pathlib.Path(workdir) / "rebuilt")
        try:
            pusher_restored, pusher_rebuilt = ImagePusher(restored), ImagePusher(rebuilt)
            indexes = _push_all(pusher_restored, arguments.images, arguments.layer_mib)
            _push_all(pusher_rebuilt, arguments.images, arguments.layer_mib)
            backup = pathlib.Path(workdir) / "backup"
            subprocess.run(["cp", "-a", str(restored.storage_root), str(backup)], check=True)
            _break(restored)
            _break(rebuilt)
            broken = _unserved(pusher_restored, indexes)
            if broken == 0 or _unserved(pusher_rebuilt, indexes) != broken:
                raise SystemExit("the GC did not break both registries the same way")

            started = time.perf_counter()
            restored.stop()
            outcome = run_restore(RestoreOptions(str(restored.storage_root),
                                                 tuple(f"app{n}:latest" for n in range(arguments.images)),
                                                 registry_offline=True), [StorageSource(str(backup))])
            restored.start()
            restore_seconds = time.perf_counter() - started
            summary = outcome.summary()

            started = time.perf_counter()
            pushed = _push_all(pusher_rebuilt, arguments.images, arguments.layer_mib)
            rebuild_seconds = time.perf_counter() - started
            # Each blob once per repository, as the push uploads it (configs are left out of the bytes: tiny).
            layers = {(index.repository, digest): len(data) for index in pushed for child in index.children
                      for digest, data in zip(child.layer_digests, child.layers)}
            blobs = {(index.repository, digest) for index in pushed for child in index.children for digest in child.blob_digests}
            pushed_objects = len(blobs) + sum(1 + len(index.children) for index in pushed)
            pushed_bytes = sum(layers.values()) + sum(index.size + sum(c.size for c in index.children) for index in pushed)

            left_restored, left_rebuilt = _unserved(pusher_restored, indexes), _unserved(pusher_rebuilt, pushed)
        finally:
            restored.close()
            rebuilt.close()

    print(f"incident: {arguments.images} multi-arch indexes ({arguments.layer_mib} MiB layers), "
          f"{broken} objects unserved after garbage-collect --delete-untagged")
    print(f"restore from a cp -a backup: {summary['restored']} objects copied ({summary['bytes']} bytes) and "
          f"{summary['linked']} links put back in {restore_seconds:.2f} s, registry stop and start included; "
          f"digests unchanged; unserved afterwards: {left_restored}")
    print(f"rebuild path, CI push only (no build): {pushed_objects} objects ({pushed_bytes} bytes) pushed in "
          f"{rebuild_seconds:.2f} s; unserved afterwards: {left_rebuilt}")
    print(f"ratio: the restore took {restore_seconds / rebuild_seconds:.2f}x the time of the push alone "
          f"({rebuild_seconds / restore_seconds:.1f}x faster), before any build time")
    return 0 if left_restored == 0 and left_rebuilt == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
