# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Push a small multi-platform image (an OCI index with two children) over the registry API.

Used by the molecule scenario on the test VM, where no docker client can pull or build from the
network. Usage: push_image.py BASE_URL REPOSITORY TAG; credentials from REGISTRY_USERNAME and
REGISTRY_PASSWORD (optional). Prints one JSON object: the index digest and the child digests.
Uploads are POST then PUT ?digest= (registry 2.8 stores nothing for a single monolithic POST).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import typing as t
import urllib.error
import urllib.parse
import urllib.request

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class PushError(Exception):
    pass


class Registry:
    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers: t.Dict[str, str] = {}
        if username:
            token = base64.b64encode(f"{username}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def request(self, method: str, url: str, body: bytes = b"", content_type: str = "") -> t.Tuple[int, t.Any]:
        if url.startswith("/"):
            url = self.base_url + url
        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(url, data=body if method in ("POST", "PUT") else None, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.headers
        except urllib.error.HTTPError as error:
            detail = error.read()[:200].decode("utf-8", "replace")
            raise PushError(f"{method} {urllib.parse.urlsplit(url).path} answered {error.code}: {detail}") from None

    def push_blob(self, repository: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        headers = self.request("POST", f"/v2/{repository}/blobs/uploads/")[1]
        location = urllib.parse.urljoin(self.base_url + "/", headers["Location"])
        separator = "&" if "?" in location else "?"
        self.request("PUT", f"{location}{separator}digest={digest}", data, "application/octet-stream")
        return digest

    def push_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        self.request("PUT", f"/v2/{repository}/manifests/{reference}", body, media_type)
        return "sha256:" + hashlib.sha256(body).hexdigest()


def layer_for(image: str, platform: str) -> t.Tuple[bytes, bytes]:
    """A real gzipped tar with one file (and the uncompressed tar, for the config's diff_id).

    The file names the image, so two images never share a blob and deleting one frees its blobs.
    """
    content = f"{image} built for {platform}\n".encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("etc/platform")
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(archive.getvalue(), mtime=0), archive.getvalue()


def push_child(registry: Registry, repository: str, tag: str, architecture: str) -> t.Dict[str, t.Any]:
    compressed, raw = layer_for(f"{repository}:{tag}", architecture)
    layer_digest = registry.push_blob(repository, compressed)
    config = json.dumps({
        "architecture": architecture,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        "config": {},
    }, sort_keys=True).encode()
    config_digest = registry.push_blob(repository, config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                    "size": len(compressed)}],
    }, sort_keys=True).encode()
    digest = registry.push_manifest(repository, "sha256:" + hashlib.sha256(manifest).hexdigest(), manifest,
                                    OCI_MANIFEST)
    return {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest),
            "platform": {"architecture": architecture, "os": "linux"}}


def main(argv: t.Sequence[str]) -> int:
    if len(argv) != 3:
        print("usage: push_image.py BASE_URL REPOSITORY TAG", file=sys.stderr)
        return 2
    base_url, repository, tag = argv
    registry = Registry(base_url, os.environ.get("REGISTRY_USERNAME", ""), os.environ.get("REGISTRY_PASSWORD", ""))
    try:
        children = [push_child(registry, repository, tag, arch) for arch in ("amd64", "arm64")]
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children},
                           sort_keys=True).encode()
        digest = registry.push_manifest(repository, tag, index, OCI_INDEX)
    except (PushError, OSError) as error:
        print(f"push of {repository}:{tag} to {base_url} failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"digest": digest, "children": [child["digest"] for child in children]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
