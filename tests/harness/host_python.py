# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Pythons a registry host may have, each in its own Debian root file system, run with chroot.

scripts/host-roots (called by scripts/bootstrap) makes the roots under .cache/rootfs with debootstrap:
bullseye (Python 3.9, as on Debian 11 and RHEL 9) and trixie (Python 3.13). Python 3.11 is this machine's
own /usr/bin/python3 (Debian 12), run without a chroot. A chroot shares the network namespace, so the
registry on 127.0.0.1 is reachable from inside; files are shared by bind-mounting a host directory at the
same path inside the root (``HostPython.sharing``), so every path a test hands the tools means the same
file on both sides. Everything mounted is unmounted, and every directory made for it removed, on the way out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import subprocess
import typing as t

TOP = pathlib.Path(__file__).resolve().parents[2]
ROOTS = TOP / ".cache" / "rootfs"


class HostRootMissing(AssertionError):
    """A root file system scripts/host-roots should have made is not there."""


@dataclasses.dataclass(frozen=True)
class HostPython:
    """One Python a registry host may run the tools with."""

    version: str  # major.minor, checked against the interpreter itself
    distribution: str
    suite: str | None  # the debootstrap suite under .cache/rootfs; None: this machine's own python3

    @property
    def id(self) -> str:
        return f"python{self.version}-{self.suite or 'host'}"

    @property
    def root(self) -> pathlib.Path | None:
        return ROOTS / self.suite if self.suite else None

    def check_root(self) -> None:
        root = self.root
        if root is not None and not (root / "usr" / "bin" / "python3").exists():
            raise HostRootMissing(f"{root} has no python3: run scripts/host-roots (scripts/bootstrap runs it)")

    def argv(self, *arguments: str) -> list[str]:
        """The command line that runs ``python3 ARGUMENTS`` on this host, from / (chroot changes to / itself)."""
        self.check_root()
        if self.root is None:
            return ["/usr/bin/python3", *arguments]
        return ["chroot", str(self.root), "/usr/bin/python3", *arguments]

    def run(
        self, *arguments: str, env: t.Mapping[str, str] | None = None, input_text: str | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run python3 with a bare environment (PATH, LANG and ``env``), from /; the caller reads the result."""
        environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", **(env or {})}
        return subprocess.run(
            self.argv(*arguments), input=input_text, capture_output=True, text=True, timeout=timeout,
            cwd="/", env=environment, check=False,
        )

    def version_seen(self) -> str:
        completed = self.run("-c", "import sys; print('%d.%d' % sys.version_info[:2])")
        if completed.returncode != 0:
            raise AssertionError(f"{' '.join(self.argv())} does not start: {completed.stderr.strip()}")
        return completed.stdout.strip()

    @contextlib.contextmanager
    def sharing(self, *paths: pathlib.Path) -> t.Iterator[None]:
        """Each host directory in ``paths`` bind-mounted at the same path inside the root, for the block."""
        root = self.root
        if root is None:
            yield
            return
        self.check_root()
        mounted: list[pathlib.Path] = []
        made: list[pathlib.Path] = []
        try:
            for path in paths:
                path = pathlib.Path(path).resolve()
                target = root / path.relative_to("/")
                absent = [p for p in (target, *target.parents) if root in p.parents and not p.exists()]
                target.mkdir(parents=True)  # raises if it exists: nothing else may be mounted there
                made.extend(reversed(absent))  # in the order they were made
                _mount(["--bind", str(path), str(target)])
                mounted.append(target)
            yield
        finally:
            problems = []
            for target in reversed(mounted):
                try:
                    _mount_command("umount", [str(target)])
                except AssertionError as error:
                    problems.append(str(error))
            if not problems:
                for directory in reversed(made):
                    with contextlib.suppress(OSError):
                        directory.rmdir()
            if problems:
                raise AssertionError("; ".join(problems))


def _mount(arguments: list[str]) -> None:
    _mount_command("mount", arguments)


def _mount_command(command: str, arguments: list[str]) -> None:
    completed = subprocess.run([command, *arguments], capture_output=True, text=True, timeout=60, check=False)
    if completed.returncode != 0:
        raise AssertionError(f"{command} {' '.join(arguments)} failed: {completed.stderr.strip()}")


# Oldest first: the oldest is the one whose grammar and library every host tool must keep to.
HOST_PYTHONS = (
    HostPython("3.9", "Debian 11 (bullseye)", "bullseye"),
    HostPython("3.11", "Debian 12 (bookworm), this machine", None),
    HostPython("3.13", "Debian 13 (trixie)", "trixie"),
)
OLDEST = HOST_PYTHONS[0]


def carry_collector(destination: pathlib.Path, binary: str) -> tuple[str, ...]:
    """The garbage collector with its own C library, runnable in any root: the command that starts it.

    On a registry host the collector runs in the registry's container, on the container's libc, whatever
    the host has; Debian's docker-registry needs glibc 2.34, newer than bullseye's. Copying the binary
    with the libc and loader it was linked against (as the FROM-scratch test image does) and starting it
    through that loader keeps it the real collector on every root.
    """
    destination.mkdir(parents=True, exist_ok=True)
    libraries = _shared_libraries(binary)
    for name, path in libraries:
        shutil.copy2(path, destination / name)
    shutil.copy2(binary, destination / "docker-registry")
    loader = next((name for name, _path in libraries if name.startswith("ld-linux")), None)
    if loader is None:
        raise AssertionError(f"ldd names no dynamic loader for {binary}: {libraries}")
    return (str(destination / loader), "--library-path", str(destination), str(destination / "docker-registry"))


def _shared_libraries(binary: str) -> list[tuple[str, str]]:
    """(the name the binary asks for, the file behind it) for every shared library ldd lists."""
    completed = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=60, check=False)
    if completed.returncode != 0:
        raise AssertionError(f"ldd {binary} failed: {completed.stderr.strip()}")
    libraries = []
    for line in completed.stdout.splitlines():
        words = line.split()
        path = words[2] if len(words) > 2 and words[1] == "=>" else words[0] if words else ""
        if path.startswith("/"):
            libraries.append((os.path.basename(words[0]), os.path.realpath(path)))
    return libraries
