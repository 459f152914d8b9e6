# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Push real images (gzip tar layers, image configs, manifests, indexes) with plain `requests`.

This client shares no code with the collection's registry client, so tests can use it as an oracle:
what it pushed, and what it reads back, is independent of the code under test.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import hashlib
import io
import json
import re
import tarfile
import time
import typing as t
import urllib.parse

import requests

from .registry import RegistryServer

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT_ALL = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
ACCEPT_DOCKER_ONLY = ", ".join((DOCKER_LIST, DOCKER_MANIFEST))

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_FOREIGN_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
IN_TOTO = "application/vnd.in-toto+json"

ATTESTATION_PLATFORM = "unknown/unknown"
FORMATS = {
    "oci": {"index": OCI_INDEX, "manifest": OCI_MANIFEST, "config": OCI_CONFIG, "layer": OCI_LAYER},
    "docker": {"index": DOCKER_LIST, "manifest": DOCKER_MANIFEST, "config": DOCKER_CONFIG, "layer": DOCKER_LAYER},
}
# A fixed date keeps content a pure function of (repository, seed, platform).
CREATED = "2026-01-01T00:00:00Z"


class PushError(RuntimeError):
    """The registry refused something the pusher sent."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_layer(content: str | bytes, filename: str = "payload.txt") -> bytes:
    """A reproducible gzip-compressed tar holding one file (same input, same bytes)."""
    payload = content.encode() if isinstance(content, str) else content
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(filename)
        info.size = len(payload)
        info.mtime = 0
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(payload))
    return gzip.compress(tar_buffer.getvalue(), compresslevel=1, mtime=0)


def _diff_id(layer: bytes) -> str:
    """The digest of the uncompressed layer, as image configs list it."""
    try:
        return sha256_digest(gzip.decompress(layer))
    except (OSError, EOFError):
        return sha256_digest(layer)


def parse_platform(platform: str) -> dict[str, str]:
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"platform must be os/arch[/variant], not {platform!r}")
    result = {"architecture": parts[1], "os": parts[0]}
    if len(parts) == 3:
        result["variant"] = parts[2]
    return result


def _canonical(document: dict[str, t.Any]) -> bytes:
    return json.dumps(document, indent=2, sort_keys=False).encode()


@dataclasses.dataclass
class PushedImage:
    """An image manifest the pusher put into the registry."""

    repository: str
    digest: str
    media_type: str
    config_digest: str
    layer_digests: list[str]
    platform: str | None
    size: int
    manifest_bytes: bytes
    tag: str | None = None
    layers: list[bytes] = dataclasses.field(default_factory=list, repr=False)
    foreign_layer_digests: list[str] = dataclasses.field(default_factory=list)
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def blob_digests(self) -> list[str]:
        """Config first, then layers, foreign layers excluded (the registry never holds those)."""
        return [self.config_digest] + [d for d in self.layer_digests if d not in self.foreign_layer_digests]

    @property
    def is_attestation(self) -> bool:
        return self.platform == ATTESTATION_PLATFORM


@dataclasses.dataclass
class PushedIndex:
    """An OCI index or Docker manifest list, with every child it references (attestations included)."""

    repository: str
    digest: str
    media_type: str
    children: list[PushedImage]
    manifest_bytes: bytes
    tag: str | None = None

    @property
    def size(self) -> int:
        return len(self.manifest_bytes)

    @property
    def image_children(self) -> list[PushedImage]:
        return [c for c in self.children if not c.is_attestation]

    @property
    def attestation_children(self) -> list[PushedImage]:
        return [c for c in self.children if c.is_attestation]

    @property
    def blob_digests(self) -> list[str]:
        """Every config and layer of every child, each once, in order."""
        seen: dict[str, None] = {}
        for child in self.children:
            for digest in child.blob_digests:
                seen.setdefault(digest, None)
        return list(seen)


_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class ImagePusher:
    """Pushes and reads content on one RegistryServer, whatever its auth mode."""

    def __init__(
        self,
        server: RegistryServer,
        *,
        username: str | None = None,
        password: str | None = None,
        check_existing: bool = False,
    ) -> None:
        self.server = server
        self.username = username if username is not None else server.username
        self.password = password if password is not None else server.password
        # Off by default: test blobs are tiny, so uploading again is cheaper than a HEAD, and a HEAD
        # can be answered by the blob-descriptor cache for data a GC already deleted.
        self.check_existing = check_existing
        self.session = requests.Session()
        self.session.verify = server.verify
        self.session.headers["User-Agent"] = "selfhosted-registry-test-pusher"
        if server.basic_auth and self.username is not None:
            self.session.auth = (self.username, self.password or "")
        self._tokens: dict[str, tuple[str, float]] = {}
        self._bearer: dict[str, str] | None = None
        self._known_blobs: dict[str, set[str]] = {}
        self._known_generation = server.generation

    # -- transport ---------------------------------------------------------------------------
    def _challenge(self) -> dict[str, str]:
        """Realm and service from the registry's own Bearer challenge (read once)."""
        if self._bearer is None:
            response = self.session.get(f"{self.server.url}/v2/", timeout=30)
            header = response.headers.get("WWW-Authenticate", "")
            if response.status_code != 401 or not header.lower().startswith("bearer "):
                raise PushError(f"{self.server.host} sent no Bearer challenge (status {response.status_code})")
            self._bearer = dict(_CHALLENGE_PARAM.findall(header))
        return self._bearer

    def token_for(self, scope: str, *, refresh: bool = False) -> str:
        """A token for ``scope`` from the realm, cached until shortly before it expires."""
        cached = self._tokens.get(scope)
        if cached is not None and not refresh and cached[1] > time.monotonic():
            return cached[0]
        challenge = self._challenge()
        auth = (self.username, self.password or "") if self.username is not None else None
        response = requests.get(
            challenge["realm"],
            params={"service": challenge.get("service", ""), "scope": scope},
            auth=auth,
            timeout=30,
        )
        if response.status_code != 200:
            raise PushError(f"token realm refused scope {scope} (status {response.status_code})")
        body = response.json()
        token = body.get("token") or body.get("access_token")
        lifetime = int(body.get("expires_in") or 60)
        self._tokens[scope] = (token, time.monotonic() + max(lifetime - 10, 1))
        return token

    def request(
        self,
        method: str,
        path: str,
        *,
        scope: str | None = None,
        **kwargs: t.Any,
    ) -> requests.Response:
        """One authenticated request to ``path`` (absolute URL or /v2/...); Bearer tokens fetched as needed."""
        url = path if path.startswith(("http://", "https://")) else self.server.url + path
        kwargs.setdefault("timeout", 60)
        kwargs.setdefault("allow_redirects", False)
        # Per request: requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override a session's verify.
        kwargs.setdefault("verify", self.server.verify)
        if self.server.auth != "token":
            return self.session.request(method, url, **kwargs)
        # No retry on 401: tokens are renewed before they expire, so a 401 is the registry's real answer
        # (and token request counts stay exact for tests that assert caching).
        headers = dict(kwargs.pop("headers", None) or {})
        headers["Authorization"] = f"Bearer {self.token_for(scope or 'registry:catalog:*')}"
        return self.session.request(method, url, headers=headers, **kwargs)

    def repo_request(
        self, method: str, repository: str, tail: str, *, actions: str = "pull", **kwargs: t.Any
    ) -> requests.Response:
        quoted = urllib.parse.quote(repository, safe="/")
        return self.request(method, f"/v2/{quoted}/{tail}", scope=f"repository:{repository}:{actions}", **kwargs)

    # -- reading (oracle side) -----------------------------------------------------------------
    def get_manifest(
        self, repository: str, reference: str, *, accept: str = ACCEPT_ALL, method: str = "GET"
    ) -> requests.Response:
        return self.repo_request(method, repository, f"manifests/{reference}", headers={"Accept": accept})

    def head_blob(self, repository: str, digest: str) -> requests.Response:
        return self.repo_request("HEAD", repository, f"blobs/{digest}")

    def blob_status(self, repository: str, digest: str) -> int:
        """200 only when a first byte really arrives, else the status (410 for a 200 with no or a cut-off body).

        HEAD is not enough: after GC the blob-descriptor cache answers HEAD (and GET headers) for
        deleted data, and the GET body is then empty.
        """
        try:
            response = self.repo_request(
                "GET", repository, f"blobs/{digest}", headers={"Range": "bytes=0-0"}, allow_redirects=True
            )
        except requests.exceptions.ChunkedEncodingError:
            return 410  # headers promised a body the registry no longer has
        if response.status_code in (200, 206):
            return 200 if len(response.content) >= 1 else 410
        return response.status_code

    def blob_exists(self, repository: str, digest: str) -> bool:
        return self.blob_status(repository, digest) == 200

    def manifest_exists(self, repository: str, reference: str) -> bool:
        return self.get_manifest(repository, reference).status_code == 200

    def delete_manifest(self, repository: str, digest: str) -> requests.Response:
        return self.repo_request("DELETE", repository, f"manifests/{digest}", actions="delete")

    def list_tags(self, repository: str) -> list[str]:
        response = self.repo_request("GET", repository, "tags/list")
        response.raise_for_status()
        return list(response.json().get("tags") or [])

    def catalog(self) -> list[str]:
        names: list[str] = []
        path = "/v2/_catalog?n=1000"
        while path:
            response = self.request("GET", path, scope="registry:catalog:*")
            response.raise_for_status()
            names.extend(response.json().get("repositories") or [])
            link = response.headers.get("Link", "")
            match = re.match(r"<([^>]+)>", link)
            path = urllib.parse.urljoin(self.server.url + "/", match.group(1)) if match else ""
        return names

    # -- pushing -------------------------------------------------------------------------------
    def _known(self, repository: str) -> set[str]:
        if self._known_generation != self.server.generation:
            self._known_blobs.clear()  # a GC or restart happened: what we remember may be gone
            self._known_generation = self.server.generation
        return self._known_blobs.setdefault(repository, set())

    def push_blob(self, repository: str, data: bytes) -> str:
        """POST an upload session, then PUT the bytes with ?digest= (2.8.2 ignores a monolithic POST body)."""
        digest = sha256_digest(data)
        known = self._known(repository)
        if digest in known:
            return digest
        if self.check_existing and self.head_blob(repository, digest).status_code == 200:
            known.add(digest)
            return digest
        started = self.repo_request("POST", repository, "blobs/uploads/", actions="pull,push")
        if started.status_code != 202 or "Location" not in started.headers:
            raise PushError(f"{repository}: upload start answered {started.status_code}: {started.text[:200]}")
        location = urllib.parse.urljoin(self.server.url + "/", started.headers["Location"])
        separator = "&" if "?" in location else "?"
        finished = self.request(
            "PUT",
            f"{location}{separator}digest={urllib.parse.quote(digest)}",
            scope=f"repository:{repository}:pull,push",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if finished.status_code != 201:
            raise PushError(
                f"{repository}: blob {digest} upload answered {finished.status_code}: {finished.text[:200]}"
            )
        known.add(digest)
        return digest

    def put_manifest(self, repository: str, reference: str, manifest_bytes: bytes, media_type: str) -> str:
        """PUT a manifest by tag or digest; returns its digest after checking the registry agrees."""
        digest = sha256_digest(manifest_bytes)
        response = self.repo_request(
            "PUT",
            repository,
            f"manifests/{reference}",
            actions="pull,push",
            data=manifest_bytes,
            headers={"Content-Type": media_type},
        )
        if response.status_code != 201:
            raise PushError(
                f"{repository}:{reference}: manifest PUT answered {response.status_code}: {response.text[:300]}"
            )
        answered = response.headers.get("Docker-Content-Digest")
        if answered != digest:
            raise PushError(f"{repository}:{reference}: registry stored {answered}, expected {digest}")
        return digest

    def tag(self, repository: str, tag: str, manifest_bytes: bytes, media_type: str) -> None:
        self.put_manifest(repository, tag, manifest_bytes, media_type)

    def _image_manifest(
        self,
        fmt: str,
        config_bytes: bytes,
        layer_descriptors: list[dict[str, t.Any]],
        *,
        config_media_type: str | None = None,
        annotations: dict[str, str] | None = None,
    ) -> bytes:
        types = FORMATS[fmt]
        document: dict[str, t.Any] = {
            "schemaVersion": 2,
            "mediaType": types["manifest"],
            "config": {
                "mediaType": config_media_type or types["config"],
                "digest": sha256_digest(config_bytes),
                "size": len(config_bytes),
            },
            "layers": layer_descriptors,
        }
        if annotations:
            document["annotations"] = annotations
        return _canonical(document)

    def push_image(
        self,
        repository: str,
        tag: str | None = None,
        *,
        fmt: str = "oci",
        platform: str = "linux/amd64",
        layers: list[bytes] | None = None,
        seed: str = "",
    ) -> PushedImage:
        """Push layers, config and an image manifest (by ``tag``, or by digest when tag is None)."""
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be 'oci' or 'docker', not {fmt!r}")
        if layers is None:
            layers = [make_layer(f"{repository}|{seed}|{platform}|layer-0\n")]
        diff_ids = [_diff_id(layer) for layer in layers]
        config = {
            "created": CREATED,
            **parse_platform(platform),
            "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Labels": {"test.seed": seed}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": CREATED, "created_by": f"test layer {i}"} for i in range(len(layers))],
        }
        config_bytes = _canonical(config)
        self.push_blob(repository, config_bytes)
        layer_digests = [self.push_blob(repository, layer) for layer in layers]
        descriptors = [
            {"mediaType": FORMATS[fmt]["layer"], "digest": d, "size": len(layer)}
            for d, layer in zip(layer_digests, layers)
        ]
        return self._put_image(repository, tag, fmt, platform, config_bytes, descriptors, list(layers))

    def _put_image(
        self,
        repository: str,
        tag: str | None,
        fmt: str,
        platform: str,
        config_bytes: bytes,
        descriptors: list[dict[str, t.Any]],
        layers: list[bytes],
    ) -> PushedImage:
        """Put the image manifest over an uploaded config and the given layer descriptors."""
        manifest_bytes = self._image_manifest(fmt, config_bytes, descriptors)
        digest = sha256_digest(manifest_bytes)
        self.put_manifest(repository, tag or digest, manifest_bytes, FORMATS[fmt]["manifest"])
        return PushedImage(
            repository=repository,
            digest=digest,
            media_type=FORMATS[fmt]["manifest"],
            config_digest=sha256_digest(config_bytes),
            layer_digests=[descriptor["digest"] for descriptor in descriptors],
            platform=platform,
            size=len(manifest_bytes),
            manifest_bytes=manifest_bytes,
            tag=tag,
            layers=layers,
        )

    def push_attestation(self, repository: str, subject: PushedImage, *, seed: str = "") -> PushedImage:
        """A BuildKit-style attestation manifest (OCI, in-toto layer) describing ``subject``; untagged."""
        statement = {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [
                {
                    "name": f"pkg:docker/{repository}?platform={urllib.parse.quote(subject.platform or '', safe='')}",
                    "digest": {"sha256": subject.digest.split(":", 1)[1]},
                }
            ],
            "predicate": {"builder": {"id": "selfhosted-registry-tests"}, "metadata": {"seed": seed}},
        }
        statement_bytes = _canonical(statement)
        config = {
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(statement_bytes)]},
        }
        config_bytes = _canonical(config)
        config_digest = self.push_blob(repository, config_bytes)
        layer_digest = self.push_blob(repository, statement_bytes)
        descriptors = [
            {
                "mediaType": IN_TOTO,
                "digest": layer_digest,
                "size": len(statement_bytes),
                "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
            }
        ]
        manifest_bytes = self._image_manifest("oci", config_bytes, descriptors, config_media_type=OCI_CONFIG)
        digest = self.put_manifest(repository, sha256_digest(manifest_bytes), manifest_bytes, OCI_MANIFEST)
        return PushedImage(
            repository=repository,
            digest=digest,
            media_type=OCI_MANIFEST,
            config_digest=config_digest,
            layer_digests=[layer_digest],
            platform=ATTESTATION_PLATFORM,
            size=len(manifest_bytes),
            manifest_bytes=manifest_bytes,
            layers=[statement_bytes],
            annotations={
                "vnd.docker.reference.digest": subject.digest,
                "vnd.docker.reference.type": "attestation-manifest",
            },
        )

    def push_index(
        self,
        repository: str,
        tag: str | None,
        *,
        fmt: str = "oci",
        platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64"),
        attestations: bool = True,
        shared_layers: list[bytes] | None = None,
        child_tags: list[str] | None = None,
        seed: str = "",
    ) -> PushedIndex:
        """Push one image per platform (untagged unless ``child_tags``), their attestations, then the index.

        ``shared_layers`` come first in every child, so another image can share them.
        Attestation manifests are OCI even in a Docker manifest list, as BuildKit writes them.
        """
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be 'oci' or 'docker', not {fmt!r}")
        if child_tags is not None and len(child_tags) != len(platforms):
            raise ValueError("child_tags needs one tag per platform")
        images: list[PushedImage] = []
        for position, platform in enumerate(platforms):
            own_layer = make_layer(f"{repository}|{seed}|{platform}|index-child\n")
            images.append(
                self.push_image(
                    repository,
                    child_tags[position] if child_tags else None,
                    fmt=fmt,
                    platform=platform,
                    layers=list(shared_layers or []) + [own_layer],
                    seed=seed,
                )
            )
        proofs = [self.push_attestation(repository, image, seed=seed) for image in images] if attestations else []

        descriptors: list[dict[str, t.Any]] = [
            {
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": image.size,
                "platform": parse_platform(image.platform or ""),
            }
            for image in images
        ]
        descriptors += [
            {
                "mediaType": proof.media_type,
                "digest": proof.digest,
                "size": proof.size,
                "annotations": proof.annotations,
                "platform": {"architecture": "unknown", "os": "unknown"},
            }
            for proof in proofs
        ]
        index_bytes = _canonical({"schemaVersion": 2, "mediaType": FORMATS[fmt]["index"], "manifests": descriptors})
        digest = sha256_digest(index_bytes)
        self.put_manifest(repository, tag or digest, index_bytes, FORMATS[fmt]["index"])
        return PushedIndex(
            repository=repository,
            digest=digest,
            media_type=FORMATS[fmt]["index"],
            children=images + proofs,
            manifest_bytes=index_bytes,
            tag=tag,
        )

    def push_foreign_layer_image(
        self,
        repository: str,
        tag: str | None = None,
        *,
        fmt: str = "oci",
        platform: str = "windows/amd64",
        seed: str = "",
        foreign_url: str = "http://127.0.0.1:9/foreign/layer.tar.gz",
    ) -> PushedImage:
        """An image whose first layer is foreign: listed with `urls`, never uploaded (like Windows bases)."""
        foreign_layer = make_layer(f"{repository}|{seed}|foreign\n")
        own_layer = make_layer(f"{repository}|{seed}|{platform}|own\n")
        config = {
            "created": CREATED,
            **parse_platform(platform),
            "config": {"Labels": {"test.seed": seed}},
            "rootfs": {"type": "layers", "diff_ids": [_diff_id(foreign_layer), _diff_id(own_layer)]},
        }
        config_bytes = _canonical(config)
        self.push_blob(repository, config_bytes)
        own_digest = self.push_blob(repository, own_layer)
        foreign_digest = sha256_digest(foreign_layer)
        foreign_type = OCI_FOREIGN_LAYER if fmt == "oci" else DOCKER_FOREIGN_LAYER
        descriptors = [
            {"mediaType": foreign_type, "digest": foreign_digest, "size": len(foreign_layer), "urls": [foreign_url]},
            {"mediaType": FORMATS[fmt]["layer"], "digest": own_digest, "size": len(own_layer)},
        ]
        image = self._put_image(repository, tag, fmt, platform, config_bytes, descriptors, [foreign_layer, own_layer])
        image.foreign_layer_digests = [foreign_digest]
        return image

    def push_many(
        self,
        repository: str,
        tags: t.Sequence[str],
        *,
        kind: str = "image",
        fmt: str = "oci",
        seed: str = "",
        workers: int = 4,
    ) -> list[PushedImage | PushedIndex]:
        """Push one distinct image (or index, ``kind="index"``) per tag, seeded by the tag; results in tag order.

        Each worker thread has its own pusher and session (a requests.Session is not thread-safe).
        """
        if kind not in ("image", "index"):
            raise ValueError(f"kind must be 'image' or 'index', not {kind!r}")

        def push_slice(chunk: t.Sequence[str]) -> list[PushedImage | PushedIndex]:
            worker = ImagePusher(self.server, username=self.username, password=self.password)
            try:
                if kind == "image":
                    return [worker.push_image(repository, tag, fmt=fmt, seed=f"{seed}|{tag}") for tag in chunk]
                return [worker.push_index(repository, tag, fmt=fmt, seed=f"{seed}|{tag}") for tag in chunk]
            finally:
                worker.session.close()

        workers = max(1, min(workers, len(tags)))
        chunks = [list(tags[i::workers]) for i in range(workers)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(push_slice, chunks))
        by_tag = {pushed.tag: pushed for chunk in results for pushed in chunk}
        return [by_tag[tag] for tag in tags]
