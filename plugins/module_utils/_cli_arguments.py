# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Argument parsing shared by the command lines that run on the registry host.

Standard library only. Both host packages install this file: ``registry_tools`` (``scan``, ``gc``;
role registry_vm) and ``registry_probe`` (``registry-probe``; role registry_probe).
"""

from __future__ import annotations

import argparse
import typing as t

# Both command lines use 2 for "could not run"; a bad command line is that too.
USAGE_ERROR = 2

_N = t.TypeVar("_N", int, float)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser that reports a bad command line as one ``ERROR`` line, without the usage text."""

    def error(self, message: str) -> t.NoReturn:
        self.exit(USAGE_ERROR, f"ERROR {self.prog}: {message}\n")


def _number(text: str, convert: t.Callable[[str], _N], minimum: _N, kind: str, below: str) -> _N:
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} {below}")
    return value


def whole_number(minimum: int) -> t.Callable[[str], int]:
    """An argparse ``type``: a whole number of at least ``minimum``."""
    return lambda text: _number(text, int, minimum, "a whole number", f"is less than {minimum}")


def seconds(text: str) -> float:
    """An argparse ``type``: a duration in seconds, fractions allowed, not negative."""
    return _number(text, float, 0.0, "a number of seconds", "is negative")
