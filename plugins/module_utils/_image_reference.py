# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image references as users write them: ``repo:tag``, ``repo@sha256:...``, ``repo:tag@sha256:...``.

Pure Python, no Ansible imports. The grammar follows the distribution reference rules closely
enough to reject anything the registry would reject, so a typo is reported before any request.
"""

from __future__ import annotations

import re
import typing as t

# One path component of a repository name: lower-case alphanumerics joined by ., _, __ or dashes.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
# The registry refuses repository names longer than this.
_MAX_REPOSITORY_LENGTH = 255

DEFAULT_TAG = "latest"


class ImageReferenceError(ValueError):
    """A reference the registry could never resolve; the message is one sentence naming it."""


class ImageReference(t.NamedTuple):
    repository: str
    tag: t.Optional[str] = None
    digest: t.Optional[str] = None

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when known (it pins the content), else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        text = self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def is_digest(value: str) -> bool:
    return bool(_DIGEST.match(value))


def _looks_like_host(component: str) -> bool:
    # Same rule as the Docker CLI: a first component with a dot or a port, or "localhost", is a host.
    return "." in component or ":" in component or component == "localhost"


def parse_image_reference(text: str, registry_host: t.Optional[str] = None) -> ImageReference:
    """Parse one reference; a host prefix is allowed only when it names ``registry_host`` (host[:port])."""
    if not isinstance(text, str) or not text.strip():
        raise ImageReferenceError("The image reference is empty.")
    original = text
    text = text.strip()

    digest: t.Optional[str] = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST.match(digest):
            raise ImageReferenceError(
                f"Image reference {original!r} has an invalid digest {digest!r}"
                " (expected sha256: followed by 64 lower-case hex digits)."
            )

    first, separator, rest = text.partition("/")
    if separator and rest and _looks_like_host(first):
        if registry_host is None or first.lower() != registry_host.lower():
            raise ImageReferenceError(
                f"Image reference {original!r} names registry {first!r},"
                f" but the module talks to {registry_host!r}."
            )
        text = rest

    tag: t.Optional[str] = None
    # The tag separator is the last colon after the last slash (a port colon was removed above).
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1:]
        if not _TAG.match(tag):
            raise ImageReferenceError(f"Image reference {original!r} has an invalid tag {tag!r}.")

    if not _REPOSITORY.match(text) or len(text) > _MAX_REPOSITORY_LENGTH:
        raise ImageReferenceError(
            f"Image reference {original!r} has an invalid repository name {text!r}"
            " (lower-case letters, digits and . _ - separators, components joined by /)."
        )
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageReference(repository=text, tag=tag, digest=digest)
