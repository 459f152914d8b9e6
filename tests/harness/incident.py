# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reproduce the incident on a real registry with the real garbage collector, no fault injection.

A tagged multi-arch OCI index keeps answering 200 while `garbage-collect --delete-untagged` has removed
its children: every child manifest answers 404 and their configs and layers are gone, except layers
another tagged image still uses. What is missing is measured over HTTP afterwards, never assumed.

Variants: ``untagged_children`` (children never tagged, GC -m), ``tag_dirs_removed`` (per-build child
tags removed with rm -rf, GC -m), ``children_deleted_by_api`` (children DELETEd by digest, plain GC).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

from .images import ImagePusher, PushedImage, PushedIndex, make_layer
from .registry import RegistryServer

VARIANTS = ("untagged_children", "tag_dirs_removed", "children_deleted_by_api")


class IncidentNotReproduced(AssertionError):
    """The garbage collector did not break the index the way the incident needs."""


@dataclasses.dataclass
class Incident:
    server: RegistryServer
    repository: str
    tag: str
    index: PushedIndex
    missing_manifests: list[str]
    missing_blobs: list[str]
    surviving_blobs: list[str]
    keep_image: PushedImage
    variant: str
    gc_result: subprocess.CompletedProcess[str]

    @property
    def reference(self) -> str:
        return f"{self.server.host}/{self.repository}:{self.tag}"


def _run_gc_stopped(server: RegistryServer, *, delete_untagged: bool) -> subprocess.CompletedProcess[str]:
    """Stop, garbage-collect, start: the order the nightly job uses."""
    server.stop()
    result = server.garbage_collect(delete_untagged=delete_untagged)
    server.start()
    if result.returncode != 0:
        raise IncidentNotReproduced(
            f"garbage-collect exited {result.returncode}: {(result.stdout + result.stderr)[-2000:]}"
        )
    return result


def reproduce_incident(
    server: RegistryServer,
    pusher: ImagePusher,
    repository: str = "infra-ci",
    tag: str = "latest",
    *,
    variant: str = "untagged_children",
    keep_image: PushedImage | None = None,
    seed: str = "",
    fmt: str = "oci",
) -> Incident:
    """Push, break with the real GC, measure. Raises IncidentNotReproduced if the GC did not break it.

    ``keep_image``: a tagged image (pushed by the caller, any repository on this server) whose layers
    the index children share; by default one is pushed as ``<repository>:<tag>-base``.
    ``fmt="docker"`` breaks a Docker manifest list the same way.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")

    if keep_image is None:
        base_layer = make_layer(f"{repository}|{seed}|shared base layer\n")
        keep_image = pusher.push_image(repository, f"{tag}-base", layers=[base_layer], seed=f"{seed}|base")
    shared_layers = list(keep_image.layers[:1])
    if not shared_layers:
        raise ValueError("keep_image has no layer bytes to share (it must come from ImagePusher)")

    platforms = ("linux/amd64", "linux/arm64")
    child_tags = None
    if variant == "tag_dirs_removed":
        child_tags = [f"build-1-{p.split('/')[1]}" for p in platforms]
    index = pusher.push_index(
        repository,
        tag,
        fmt=fmt,
        platforms=platforms,
        attestations=True,
        shared_layers=shared_layers,
        child_tags=child_tags,
        seed=seed,
    )

    if variant == "tag_dirs_removed":
        # The daily clean-up: delete old build tags straight from the filesystem.
        for child_tag in child_tags or []:
            shutil.rmtree(server.tag_path(repository, child_tag))

    if variant == "children_deleted_by_api":
        # A clean-up tool deleting "untagged" manifests by digest: the registry accepts it (202)
        # although the tagged index still lists them; a plain GC then sweeps their blobs.
        for child in index.children:
            response = pusher.delete_manifest(repository, child.digest)
            if response.status_code != 202:
                raise IncidentNotReproduced(f"DELETE of child {child.digest} answered {response.status_code}")

    gc_result = _run_gc_stopped(server, delete_untagged=variant != "children_deleted_by_api")

    # Measure over HTTP on the restarted registry (its blob-descriptor cache is empty again).
    if pusher.get_manifest(repository, tag).status_code != 200:
        raise IncidentNotReproduced(f"{repository}:{tag} no longer answers 200 after the GC")
    missing_manifests: list[str] = []
    for child in index.children:
        response = pusher.get_manifest(repository, child.digest)  # every manifest type in Accept
        if response.status_code == 404 and "MANIFEST_UNKNOWN" in response.text:
            missing_manifests.append(child.digest)
        elif response.status_code != 200:
            raise IncidentNotReproduced(f"child {child.digest} answered {response.status_code}, not 200 or 404")
    kept_blobs = set(keep_image.blob_digests)
    missing_blobs: list[str] = []
    surviving_blobs: list[str] = []
    for digest in index.blob_digests:
        status = pusher.blob_status(repository, digest)
        if status == 200:
            surviving_blobs.append(digest)
        elif status != 404:
            raise IncidentNotReproduced(f"blob {digest} answered {status}, not 200 or 404")
        elif digest in kept_blobs:
            raise IncidentNotReproduced(f"layer {digest} shared with the tagged keep_image was swept too")
        else:
            missing_blobs.append(digest)

    if len(missing_manifests) != len(index.children):
        raise IncidentNotReproduced(
            f"only {len(missing_manifests)} of {len(index.children)} children of {repository}:{tag} answer 404"
        )
    if not missing_blobs:
        raise IncidentNotReproduced(f"no config or layer of {repository}:{tag} was swept")
    if not set(keep_image.layer_digests[:1]) & set(surviving_blobs):
        raise IncidentNotReproduced("the layer shared with the tagged keep_image did not survive")
    if not keep_image_intact(pusher, keep_image):
        raise IncidentNotReproduced(f"the tagged keep_image {keep_image.repository}:{keep_image.tag} was damaged")

    return Incident(
        server=server,
        repository=repository,
        tag=tag,
        index=index,
        missing_manifests=missing_manifests,
        missing_blobs=missing_blobs,
        surviving_blobs=surviving_blobs,
        keep_image=keep_image,
        variant=variant,
        gc_result=gc_result,
    )


def keep_image_intact(pusher: ImagePusher, image: PushedImage) -> bool:
    reference = image.tag or image.digest
    if pusher.get_manifest(image.repository, reference).status_code != 200:
        return False
    return all(pusher.blob_exists(image.repository, digest) for digest in image.blob_digests)
