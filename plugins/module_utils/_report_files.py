# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomic report writers shared by the verifier and the storage scanner.

Standard library only: this file also runs on the registry host, outside Ansible.
A reader (node_exporter's textfile collector, a monitoring check) must never see
a half-written file, so every write goes to a temporary file in the same
directory and is renamed over the target.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import typing as t

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class Metric(t.NamedTuple):
    """One Prometheus sample: name, help text, type, value and labels."""

    name: str
    help: str
    kind: str  # "gauge" or "counter"
    value: float
    labels: t.Mapping[str, str] = {}


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write text to path so that readers see either the old or the new content.

    An OSError names ``path`` as its filename whatever step failed, so a message built from it names
    the file the user asked for, never None (a full disk) or the temporary file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    except OSError as error:
        raise OSError(error.errno, error.strerror, path) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as error:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError):
            raise OSError(error.errno, error.strerror, path) from None
        raise


def write_json_report(path: str, report: t.Mapping[str, t.Any]) -> None:
    write_atomic(path, json.dumps(report, indent=2, sort_keys=True) + "\n")


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    # Exact integers print whole (a Unix timestamp must keep its seconds); repr keeps every float digit.
    number = float(value)
    if number.is_integer() and abs(number) < 2 ** 53:
        return str(int(number))
    return repr(number)


def render_metrics(metrics: t.Iterable[Metric]) -> str:
    """Render samples in the Prometheus text exposition format, HELP/TYPE once per name."""
    lines: list[str] = []
    described: set[str] = set()
    for metric in metrics:
        if not _METRIC_NAME.match(metric.name):
            raise ValueError(f"invalid metric name {metric.name!r}")
        if metric.name not in described:
            described.add(metric.name)
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
        labels = ""
        if metric.labels:
            for key in metric.labels:
                if not _LABEL_NAME.match(key):
                    raise ValueError(f"invalid label name {key!r}")
            labels = "{" + ",".join(
                f'{key}="{_escape_label_value(str(value))}"' for key, value in sorted(metric.labels.items())
            ) + "}"
        lines.append(f"{metric.name}{labels} {_format_value(metric.value)}")
    return "\n".join(lines) + "\n"


def write_metrics(path: str, metrics: t.Iterable[Metric]) -> None:
    """Write a node_exporter textfile (the file name must end in .prom to be collected)."""
    write_atomic(path, render_metrics(metrics))
