# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scheduled integrity probe: the whole catalog walked end to end, a JSON report and textfile metrics.

The registry_probe role installs this file with the walk it runs (``_manifest_walk.py`` and what it
imports) as the package ``registry_probe`` and schedules::

    python3 -m registry_probe._integrity_probe --registry-url https://registry.example:5000 \\
        --credentials-file /opt/selfhosted-registry-probe/credentials.json --interval 900 \\
        --json-report /var/lib/selfhosted-registry/reports/probe.json \\
        --metrics-file /var/lib/prometheus/node-exporter/selfhosted_registry_probe.prom

Where no node_exporter reads the host's files (a probe scheduled in AWX runs in a throwaway
container), ``--pushgateway-url`` pushes the same metrics to a Prometheus Pushgateway instead of, or
beside, the textfile.

It needs the Python library requests (Debian: python3-requests) and nothing from Ansible: the
verification, the report and the metrics are the same code as the registry_manifest_verify module's.

Runs never overlap: a run that finds the lock held says so in one line and exits 3, leaving the
report and metrics to the run in progress.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import sys
import typing as t

from ._cli_arguments import OneLineParser, whole_number
from ._manifest_walk import BLOB_CHECK_MODES, ManifestCache, ManifestWalker
from ._registry_client import DEFAULT_RETRY_WINDOW, RegistryClient, RegistryError
from ._report_files import pushgateway_url_problem, redact_url, write_json_report, write_metrics
from ._verify_report import (
    DEFAULT_PUSHGATEWAY_JOB,
    VerifyRun,
    first_per_image,
    load_previous_run,
    push_run_metrics,
    run_verification,
)

EXIT_OK, EXIT_BROKEN, EXIT_UNVERIFIED, EXIT_BUSY = 0, 1, 2, 3  # a bad command line exits 2 too
DEFAULT_LOCK_FILE = "/run/lock/selfhosted-registry-probe.lock"


class ProbeError(Exception):
    """The probe could not start (bad options, unreadable credentials, a lock it cannot take)."""


def _pushgateway_url(text: str) -> str:
    problem = pushgateway_url_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{redact_url(text)} {problem}")
    return text


def _job_name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the job name is empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="registry-probe",
        description="Walk every tag of every repository end to end (index, children, config, layers) and"
                    " write a JSON report and Prometheus textfile metrics.",
        epilog="Exit status: 0 every image verified; 1 an image is broken (missing or damaged objects);"
               " 2 the registry could not be verified (unreachable, credentials rejected, catalog or tag"
               " lists unreadable, objects it did not answer for); 3 another run holds the lock."
               " Credentials come from --credentials-file (JSON with username and password, readable by"
               " root only) or the REGISTRY_USERNAME and REGISTRY_PASSWORD environment variables, never"
               " from the command line.",
    )
    parser.add_argument("--registry-url", required=True, help="https://host:port of the registry to probe")
    parser.add_argument("--credentials-file", help="JSON file with username and password")
    parser.add_argument("--ca-path", help="CA bundle that signed the registry's certificate")
    parser.add_argument("--repository", action="append", dest="repositories", metavar="PATTERN",
                        help="only repositories matching this shell pattern (repeatable)")
    parser.add_argument("--blob-check", choices=BLOB_CHECK_MODES, default="head",
                        help="head: headers only; read: the first byte of every blob (default head)")
    parser.add_argument("--concurrency", type=whole_number(1), default=8, help="requests in flight (default 8)")
    parser.add_argument("--timeout", type=whole_number(1), default=30, help="seconds per request (default 30)")
    parser.add_argument("--retry-window", type=whole_number(0), default=int(DEFAULT_RETRY_WINDOW), metavar="SECONDS",
                        help="keep retrying connection errors, 408, 429 and 5xx this long, so a run rides out a"
                             f" registry restart; 0: no retries (default {int(DEFAULT_RETRY_WINDOW)})")
    parser.add_argument("--interval", type=whole_number(1), metavar="SECONDS",
                        help="how often the probe is scheduled; exported for the staleness alert")
    parser.add_argument("--manifest-cache", metavar="DIR",
                        help="keep manifest bodies so a later run names the blobs of a child that is gone")
    parser.add_argument("--json-report", required=True, metavar="PATH", help="the last run's JSON report")
    parser.add_argument("--metrics-file", metavar="PATH", help="node_exporter textfile (*.prom)")
    parser.add_argument("--pushgateway-url", type=_pushgateway_url, metavar="URL",
                        help="also push the metrics to this Prometheus Pushgateway (http://host:9091), replacing"
                             " the group job + registry with each run (HTTP PUT); a Pushgateway that cannot be"
                             " reached is one warning on stderr and never changes the verdict or exit status")
    parser.add_argument("--pushgateway-job", type=_job_name, default=DEFAULT_PUSHGATEWAY_JOB, metavar="NAME",
                        help=f"the job label of the pushed group (default {DEFAULT_PUSHGATEWAY_JOB})")
    parser.add_argument("--lock-file", default=DEFAULT_LOCK_FILE, metavar="PATH",
                        help=f"held for the whole run so runs never overlap (default {DEFAULT_LOCK_FILE})")
    return parser


def read_credentials(path: t.Optional[str], environ: t.Mapping[str, str]) -> t.Tuple[t.Optional[str], t.Optional[str]]:
    """Username and password from the credentials file, else the environment; the file's text is never echoed."""
    if not path:
        return environ.get("REGISTRY_USERNAME") or None, environ.get("REGISTRY_PASSWORD") or None
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except OSError as exc:
        raise ProbeError(f"Could not read the credentials file {path}: {exc.strerror or exc}.") from None
    except (ValueError, RecursionError):
        raise ProbeError(f"The credentials file {path} is not JSON.") from None
    if not isinstance(document, dict) or not all(
        isinstance(document.get(key, ""), str) for key in ("username", "password")
    ):
        raise ProbeError(f"The credentials file {path} must hold an object with string username and password.")
    return document.get("username") or None, document.get("password") or None


def take_lock(path: str) -> t.Optional[int]:
    """A held exclusive lock on path (its descriptor), or None when another run holds it."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ProbeError(f"Could not open the lock file {path}: {exc.strerror or exc}.") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(descriptor)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise ProbeError(f"Could not lock {path}: {exc.strerror or exc}.") from None
    return descriptor


def _say(line: str, stream: t.TextIO = sys.stdout) -> None:
    stream.write(line + "\n")


def summary_lines(run: VerifyRun) -> t.List[str]:
    """Greppable lines: one per broken or unverified image (its first finding), then one SUMMARY line."""
    if run.result is None:
        return [f"ERROR {run.error}", "SUMMARY verified=no"]
    result = run.result
    lines = []
    for label, findings in (("BROKEN", result.broken), ("UNVERIFIED", result.unverified)):
        for finding in first_per_image(findings):
            lines.append(f"{label} image={finding.reference} object={finding.object_type}"
                         f" digest={finding.digest or '-'} status={finding.status or '-'} {finding.message}")
    for error in result.repository_errors:
        lines.append(f"UNVERIFIED repository={error.repository} status={error.status or '-'} {error.message}")
    summary = result.summary
    lines.append(f"SUMMARY verified=yes images={summary.images} broken={summary.broken_images}"
                 f" unverified={summary.unverified_images} repository_errors={summary.repository_errors}"
                 f" manifests={summary.manifests} blobs={summary.blobs} requests={summary.requests}")
    return lines


def exit_status(run: VerifyRun) -> int:
    if run.result is None:
        return EXIT_UNVERIFIED
    if run.result.broken:
        return EXIT_BROKEN
    return EXIT_OK if run.result.ok else EXIT_UNVERIFIED


def probe(options: argparse.Namespace, environ: t.Mapping[str, str]) -> int:
    username, password = read_credentials(options.credentials_file, environ)
    lock = take_lock(options.lock_file)
    if lock is None:
        _say(f"BUSY another probe run holds {options.lock_file}; this run did nothing.")
        return EXIT_BUSY
    try:
        try:
            client = RegistryClient(options.registry_url, username=username, password=password,
                                    verify=options.ca_path or True, timeout=float(options.timeout),
                                    pool_size=options.concurrency, retry_window=float(options.retry_window))
        except RegistryError as exc:
            raise ProbeError(exc.message) from None
        cache = None
        if options.manifest_cache:
            try:
                os.makedirs(options.manifest_cache, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise ProbeError(f"Could not create the manifest cache {options.manifest_cache}:"
                                 f" {exc.strerror or exc}.") from None
            cache = ManifestCache(options.manifest_cache)
        walker = ManifestWalker(client, concurrency=options.concurrency, blob_check=options.blob_check, cache=cache)
        # A container started afresh (a Kubernetes CronJob) has no report yet: what the last run pushed
        # is then its memory, so failed runs and broken images carry over as they do on a host.
        previous, unread_push = load_previous_run(options.json_report, client.base_url, client.host,
                                                  options.pushgateway_url, options.pushgateway_job,
                                                  timeout=float(options.timeout))
        try:
            run = run_verification(client, walker, repositories=options.repositories, previous=previous,
                                   interval_seconds=options.interval, blob_check=options.blob_check)
        finally:
            client.close()
        # The metrics first: node_exporter must never show the last good state after a failed run.
        for write, path, payload in ((write_metrics, options.metrics_file, run.metrics),
                                     (write_json_report, options.json_report, run.report)):
            if path:
                try:
                    write(path, payload)
                except OSError as exc:
                    raise ProbeError(f"Could not write {path}: {exc.strerror or exc}.") from None
        if options.pushgateway_url:
            warning = push_run_metrics(run, options.pushgateway_url, client.host, job=options.pushgateway_job,
                                       timeout=float(options.timeout), unread=unread_push)
            if warning:
                _say(f"WARNING registry-probe: {warning}", sys.stderr)
    finally:
        os.close(lock)
    for line in summary_lines(run):
        _say(line)
    return exit_status(run)


def main(argv: t.Optional[t.Sequence[str]] = None, environ: t.Optional[t.Mapping[str, str]] = None) -> int:
    options = build_parser().parse_args(argv)
    try:
        return probe(options, os.environ if environ is None else environ)
    except ProbeError as exc:
        _say(f"ERROR registry-probe: {exc}", sys.stderr)
        return EXIT_UNVERIFIED


if __name__ == "__main__":
    raise SystemExit(main())
