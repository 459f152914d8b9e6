# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writes registry filesystem-driver storage trees directly, for the scanner's damage corpus.

The layout is the one distribution 2.8 writes; tests that need the registry's own writes use the
harness instead. Everything here is deterministic from a seed so failures reproduce.
"""

from __future__ import annotations

import hashlib
import json
import os
import typing as t

import yaml

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


class Image(t.NamedTuple):
    digest: str
    media_type: str
    config: str
    layers: t.Tuple[str, ...]


class Index(t.NamedTuple):
    digest: str
    media_type: str
    children: t.Tuple[Image, ...]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class StorageTree:
    """A storage tree under ``<root>/docker/registry/v2``."""

    def __init__(self, root: str) -> None:
        self.root = str(root)
        self.v2 = os.path.join(self.root, "docker", "registry", "v2")
        os.makedirs(os.path.join(self.v2, "blobs", "sha256"), exist_ok=True)
        os.makedirs(os.path.join(self.v2, "repositories"), exist_ok=True)

    # -- paths -------------------------------------------------------------------------------------
    def blob_dir(self, digest: str) -> str:
        hex_digest = digest.split(":", 1)[1]
        return os.path.join(self.v2, "blobs", "sha256", hex_digest[:2], hex_digest)

    def blob_data(self, digest: str) -> str:
        return os.path.join(self.blob_dir(digest), "data")

    def repo_dir(self, repo: str) -> str:
        return os.path.join(self.v2, "repositories", *repo.split("/"))

    def revision_link(self, repo: str, digest: str) -> str:
        return os.path.join(self.repo_dir(repo), "_manifests", "revisions", "sha256", digest[7:], "link")

    def layer_link(self, repo: str, digest: str) -> str:
        return os.path.join(self.repo_dir(repo), "_layers", "sha256", digest[7:], "link")

    def tag_link(self, repo: str, tag: str) -> str:
        return os.path.join(self.repo_dir(repo), "_manifests", "tags", tag, "current", "link")

    def tag_history_link(self, repo: str, tag: str, digest: str) -> str:
        return os.path.join(self.repo_dir(repo), "_manifests", "tags", tag, "index", "sha256", digest[7:], "link")

    # -- writes ------------------------------------------------------------------------------------
    @staticmethod
    def write_file(path: str, data: t.Union[bytes, str]) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)

    def blob(self, data: bytes) -> str:
        digest = digest_of(data)
        path = self.blob_data(digest)
        if not os.path.exists(path):
            self.write_file(path, data)
        return digest

    def link_layer(self, repo: str, digest: str) -> None:
        self.write_file(self.layer_link(repo, digest), digest)

    def link_revision(self, repo: str, digest: str) -> None:
        self.write_file(self.revision_link(repo, digest), digest)

    def tag(self, repo: str, tag: str, digest: str) -> None:
        self.write_file(self.tag_link(repo, tag), digest)
        self.write_file(self.tag_history_link(repo, tag, digest), digest)

    def image(
        self,
        repo: str,
        tag: t.Optional[str] = None,
        fmt: str = "oci",
        layers: int = 2,
        seed: str = "0",
        shared_layers: t.Sequence[str] = (),
        link_revision: bool = True,
    ) -> Image:
        """Push one image manifest (config + layers) the way the registry stores it."""
        manifest_type, config_type, layer_type = (
            (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER) if fmt == "oci" else (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
        )
        layer_blobs = []
        for number in range(layers):
            data = f"layer {repo} {seed} {number}".encode() * 8
            digest = self.blob(data)
            self.link_layer(repo, digest)
            layer_blobs.append((digest, len(data)))
        for digest in shared_layers:
            self.link_layer(repo, digest)
            layer_blobs.append((digest, os.path.getsize(self.blob_data(digest))))
        config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed, "repo": repo}).encode()
        config_digest = self.blob(config)
        self.link_layer(repo, config_digest)
        manifest = {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": layer_type, "digest": digest, "size": size} for digest, size in layer_blobs],
        }
        body = json.dumps(manifest, indent=3).encode()
        digest = self.blob(body)
        if link_revision:
            self.link_revision(repo, digest)
        if tag:
            self.tag(repo, tag, digest)
        return Image(digest, manifest_type, config_digest, tuple(digest for digest, _size in layer_blobs))

    def index(
        self,
        repo: str,
        tag: t.Optional[str],
        children: t.Sequence[Image],
        fmt: str = "oci",
    ) -> Index:
        """Push an index (or Docker manifest list) over already pushed children."""
        media_type = OCI_INDEX if fmt == "oci" else DOCKER_LIST
        entries = []
        for number, child in enumerate(children):
            with open(self.blob_data(child.digest), "rb") as handle:
                size = len(handle.read())
            entries.append(
                {
                    "mediaType": child.media_type,
                    "digest": child.digest,
                    "size": size,
                    "platform": {"architecture": ["amd64", "arm64", "s390x", "ppc64le"][number % 4], "os": "linux"},
                }
            )
        body = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries}, indent=3).encode()
        digest = self.blob(body)
        self.link_revision(repo, digest)
        if tag:
            self.tag(repo, tag, digest)
        return Index(digest, media_type, tuple(children))

    def multiarch(self, repo: str, tag: str, fmt: str = "oci", platforms: int = 2, seed: str = "0") -> Index:
        children = [self.image(repo, None, fmt=fmt, seed=f"{seed}-{number}") for number in range(platforms)]
        return self.index(repo, tag, children, fmt=fmt)

    # -- damage ------------------------------------------------------------------------------------
    def remove_revision(self, repo: str, digest: str) -> None:
        path = os.path.dirname(self.revision_link(repo, digest))
        os.unlink(os.path.join(path, "link"))
        os.rmdir(path)

    def remove_blob(self, digest: str) -> None:
        os.unlink(self.blob_data(digest))
        os.rmdir(self.blob_dir(digest))

    def listing(self) -> t.List[t.Tuple[str, str, int]]:
        """Every path under the tree with its type and size, to prove nothing changed."""
        return [(path, oct(mode), size) for path, mode, size, _mtime in tree_listing(self.root)]


def tree_listing(root: t.Union[str, "os.PathLike[str]"]) -> t.List[t.Tuple[str, int, int, int]]:
    """Every path under root, sorted, with its mode, size and modification time: proof that nothing changed."""
    rows = []
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(directory, name)
            info = os.lstat(path)
            rows.append((os.path.relpath(path, root), info.st_mode, info.st_size, info.st_mtime_ns))
    return rows


TOP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..")
MODULE_UTILS = os.path.join(TOP, "plugins", "module_utils")
# The files the registry_vm role installs, read from the role: a file it forgets fails the installed-package tests.
with open(os.path.join(TOP, "roles", "registry_vm", "defaults", "main.yml"), encoding="utf-8") as _defaults:
    TOOL_FILES = tuple(yaml.safe_load(_defaults)["registry_vm_tools_files"])


def install_registry_tools(destination: str) -> str:
    """Lay the stdlib files out as the role does (package ``registry_tools``); return its parent."""
    package = os.path.join(str(destination), "registry_tools")
    os.makedirs(package, exist_ok=True)
    for name in TOOL_FILES:
        with open(os.path.join(MODULE_UTILS, name), "rb") as source:
            data = source.read()
        with open(os.path.join(package, name), "wb") as target:
            target.write(data)
    open(os.path.join(package, "__init__.py"), "w").close()
    return str(destination)
