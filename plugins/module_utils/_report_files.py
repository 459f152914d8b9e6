# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomic report writers shared by the verifier and the storage scanner, and the Pushgateway push.

Standard library only: this file also runs on the registry host, outside Ansible.
A reader (node_exporter's textfile collector, a monitoring check) must never see
a half-written file, so every write goes to a temporary file in the same
directory and is renamed over the target.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import tempfile
import typing as t
import urllib.parse

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


def write_report_files(
    report_path: t.Optional[str], report: t.Mapping[str, t.Any], metrics_path: t.Optional[str],
    metrics: t.Iterable[Metric],
) -> t.Optional[str]:
    """Write the JSON report and the textfile metrics to the paths given (either may be empty).

    None when all went well, else one line naming the file that could not be written: the caller decides
    whether that fails the run.
    """
    try:
        if report_path:
            write_json_report(report_path, report)
        if metrics_path:
            write_metrics(metrics_path, metrics)
    except OSError as error:
        return f"cannot write {error.filename}: {error.strerror}"
    return None


class PushError(Exception):
    """The Pushgateway could not be reached or refused the metrics; the message is one sentence."""


def pushgateway_url_problem(url: str) -> t.Optional[str]:
    """Why url cannot be a Pushgateway address (scheme://host[:port][/prefix], no credentials), or None."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError on a port that is not a number or out of range
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must start with http:// or https:// and name a host"
    if port == 0:
        return "names port 0"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if parts.query or parts.fragment:
        return "must not carry a query or a fragment"
    return None


def redact_url(url: str) -> str:
    """url without any user:password@ part, for messages."""
    return re.sub(r"//[^/@]*@", "//", url)


def _grouping_segment(name: str, value: str) -> str:
    # A value with a slash (or an empty one) cannot be a path segment: the Pushgateway's base64 form.
    if not value or "/" in value:
        encoded = base64.urlsafe_b64encode(value.encode("utf-8")).decode("ascii") or "="
        return f"{name}@base64/{encoded}"
    return f"{name}/{urllib.parse.quote(value, safe='')}"


def _pushgateway_request(url: str, method: str, path: str, timeout: float, body: t.Optional[bytes] = None,
                         headers: t.Optional[t.Mapping[str, str]] = None, limit: int = 300) -> t.Tuple[int, bytes]:
    """One request to the Pushgateway: its status and up to ``limit`` bytes of its body, or PushError."""
    problem = pushgateway_url_problem(url)
    if problem:
        raise PushError(f"The Pushgateway URL {redact_url(url)} {problem}.")
    parts = urllib.parse.urlsplit(url)
    # http.client directly: this file runs on hosts with the standard library only (no Ansible's open_url).
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request(method, parts.path.rstrip("/") + path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        return response.status, response.read(limit)
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise PushError(f"Could not reach the Pushgateway {redact_url(url)}: {reason}.") from None
    finally:
        connection.close()


# The Pushgateway's JSON of every group is read whole; a probe's group is small, but a shared gateway
# holds other jobs' groups too.
PUSHED_GROUPS_LIMIT = 64 * 1024 * 1024


def read_pushed_group(url: str, job: str, grouping: t.Mapping[str, str],
                      timeout: float = 10.0) -> t.Dict[str, t.List[t.Tuple[t.Dict[str, str], float]]]:
    """The samples the Pushgateway holds for one group (job + grouping labels), by metric name; empty when
    it holds no such group. For a scheduled job that keeps no files (an AWX job's container), the last
    push is the only memory of the previous run."""
    status, body = _pushgateway_request(url, "GET", "/api/v1/metrics", timeout, limit=PUSHED_GROUPS_LIMIT)
    where = redact_url(url)
    if status != 200:
        raise PushError(f"The Pushgateway {where} answered {status} to a read of its groups.")
    try:
        groups = json.loads(body)["data"]
        wanted = dict(grouping, job=job)
        samples: t.Dict[str, t.List[t.Tuple[t.Dict[str, str], float]]] = {}
        for group in groups:
            # The Pushgateway adds instance="" to a group without one; an empty label is no label.
            if {key: value for key, value in group["labels"].items() if value} != wanted:
                continue
            for name, family in group.items():
                if isinstance(family, dict) and isinstance(family.get("metrics"), list):
                    samples[name] = [({str(k): str(v) for k, v in sample.get("labels", {}).items()},
                                      float(sample["value"])) for sample in family["metrics"]]
        return samples
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise PushError(f"The Pushgateway {where} answered a read of its groups with something that is not"
                        " its JSON.") from None


def push_metrics(
    url: str,
    job: str,
    grouping: t.Mapping[str, str],
    metrics: t.Iterable[Metric],
    timeout: float = 10.0,
) -> None:
    """Replace the group (job + grouping labels) on a Pushgateway with these samples (HTTP PUT).

    PUT, not POST: a series the last run pushed and this run did not (a tag no longer broken) is gone
    afterwards, exactly as it would be from a rewritten textfile.
    """
    path = "/metrics/" + "/".join(
        [_grouping_segment("job", job)] + [_grouping_segment(key, value) for key, value in sorted(grouping.items())]
    )
    status, body = _pushgateway_request(url, "PUT", path, timeout, body=render_metrics(metrics).encode("utf-8"),
                                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
    if not 200 <= status < 300:
        lines = body.decode("utf-8", "replace").strip().splitlines()
        detail = f": {lines[0]}" if lines else ""
        raise PushError(f"The Pushgateway {redact_url(url)} answered {status}{detail}.")
