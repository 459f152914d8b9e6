# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Command line for the registry host: ``scan`` (storage scan) and ``gc`` (guarded garbage-collect).

Standard library only. The registry_vm role installs this file, ``_storage_scan.py``, ``_gc_guard.py``,
``_report_files.py`` and ``_cli_arguments.py`` with an empty ``__init__.py`` as the package ``registry_tools``
and runs::

    python3 -m registry_tools._registry_tools_cli scan --storage-root /srv/registry/data \\
        --min-age 3600 --json-report /var/lib/registry-tools/scan.json \\
        --metrics-file /var/lib/node_exporter/textfile/registry_scan.prom

    python3 -m registry_tools._registry_tools_cli gc --storage-root /srv/registry/data \\
        --config /etc/docker/registry/config.yml \\
        --gc-command 'docker compose -f /opt/registry/compose.yml run --rm --no-deps registry registry' \\
        --before-command 'docker compose -f /opt/registry/compose.yml stop registry' \\
        --after-command 'docker compose -f /opt/registry/compose.yml up -d registry'

Exit codes. scan: 0 clean, 1 findings, 2 could not scan. gc: 0 done (collected, nothing to collect,
or a dry run that would collect), 1 refused, 2 error (interrupted, timed out, storage the guard cannot
read or cannot prove to be the collector's). Each finding is one line on standard output; errors are
one line on standard error starting with ``ERROR``. SIGTERM and SIGHUP stop the collector and still run
the after command.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import typing as t

from ._cli_arguments import OneLineParser, seconds
from ._gc_guard import FAILED, GCGuardError, GCOptions, GCOutcome, run_guarded_gc, running_metrics
from ._report_files import Metric, write_report_files
from ._storage_scan import (
    DEFAULT_LOCK_FILE,
    DEFAULT_LOCK_WAIT,
    LOCK_FILE_ENV,
    HostLockError,
    ScanError,
    failed_scan_metrics,
    failed_scan_report,
    host_lock,
    scan_metrics,
    scan_storage,
)

SCAN_CLEAN, SCAN_FINDINGS, SCAN_FAILED = 0, 1, 2
ORPHAN_LAYER_LINK_EXIT = (
    "An ORPHAN LAYER LINK with referenced=no (a _layers link without data that no manifest in the repository "
    "references) is listed but keeps exit 0: the registry's own garbage-collect deletes blob data and leaves "
    "these links behind after every collection of a deleted image, nothing can pull through them (no manifest "
    "names them, and a push uploads the layer again because its data is gone), so exit 1 would make every scan "
    "after every GC red. With referenced=yes a manifest needs the layer: that is exit 1."
)


def _command(text: str) -> t.List[str]:
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"cannot split command {text!r}: {error}") from None
    if not words:
        raise argparse.ArgumentTypeError("command is empty")
    return words


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="registry_tools", description="Registry storage scan and guarded garbage collection.")
    commands = parser.add_subparsers(dest="command", metavar="{scan,gc}", parser_class=OneLineParser)
    commands.required = True

    scan = commands.add_parser(
        "scan",
        help="find broken images in filesystem storage (read-only)",
        description="Find broken images in filesystem storage (read-only). Exit 0 clean, 1 findings, 2 could not scan.",
        epilog=ORPHAN_LAYER_LINK_EXIT,
    )
    scan.add_argument("--storage-root", required=True, help="registry rootdirectory or its docker/registry/v2")
    scan.add_argument(
        "--repository",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only repositories matching this shell pattern (repeatable)",
    )
    scan.add_argument(
        "--min-age",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="ignore objects changed less than this long ago (pushes in progress)",
    )
    scan.add_argument("--json-report", metavar="FILE", help="write the full result as JSON (atomically)")
    scan.add_argument("--metrics-file", metavar="FILE", help="write a node_exporter textfile (.prom)")
    _lock_arguments(scan)

    gc = commands.add_parser("gc", help="run garbage-collect only when it cannot break a tagged image")
    gc.add_argument("--storage-root", required=True, help="registry rootdirectory or its docker/registry/v2")
    gc.add_argument("--config", required=True, help="registry config path as the gc command sees it")
    gc.add_argument(
        "--config-on-host",
        default="",
        metavar="FILE",
        help="the same config as this host sees it, when --config is a path inside a container (default: --config); "
        "its storage.filesystem.rootdirectory must be --storage-root (same real path) or --storage-root-in-config",
    )
    gc.add_argument(
        "--storage-root-in-config",
        default="",
        metavar="PATH",
        help="when the collector runs in a container that mounts --storage-root at PATH: the rootdirectory the "
        "config must name. Either way, every revision the dry run walks must be in --storage-root, or nothing runs",
    )
    gc.add_argument("--delete-untagged", action="store_true", help="pass --delete-untagged to garbage-collect")
    gc.add_argument(
        "--gc-command",
        type=_command,
        default=["docker-registry"],
        metavar="CMD",
        help="command prefix that runs the registry binary; 'garbage-collect [flags] CONFIG' is appended "
        "(default: docker-registry)",
    )
    gc.add_argument(
        "--before-command",
        type=_command,
        default=[],
        metavar="CMD",
        help="run before the collection, e.g. stop the registry or switch it to read-only",
    )
    gc.add_argument(
        "--after-command",
        type=_command,
        default=[],
        metavar="CMD",
        help="run afterwards whatever happened, e.g. start or restart the registry",
    )
    gc.add_argument(
        "--gc-stop-command",
        type=_command,
        default=[],
        metavar="CMD",
        help="run when the collector had to be stopped (timeout, SIGTERM, SIGHUP), after its process group is "
        "killed and before the after command, e.g. remove the one-off container of 'docker compose run --name'",
    )
    gc.add_argument(
        "--registry-offline",
        action="store_true",
        help="the registry is stopped or read-only for the whole run although no --before-command makes it so; "
        "without one of the two the collection is refused (a push between dry run and collection could be broken)",
    )
    gc.add_argument("--dry-run", action="store_true", help="only the dry run and the verdict; change nothing")
    gc.add_argument("--timeout", type=seconds, default=3600.0, metavar="SECONDS", help="per command")
    gc.add_argument(
        "--gc-timeout",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="how long the collector (dry run or collection) may run before it is stopped and the after command "
        "runs (default: --timeout)",
    )
    gc.add_argument("--json-report", metavar="FILE", help="write the outcome as JSON (atomically)")
    gc.add_argument("--metrics-file", metavar="FILE", help="write a node_exporter textfile (.prom)")
    _lock_arguments(gc)
    return parser


def _lock_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lock-file",
        default="",
        metavar="FILE",
        help=f"host-wide lock shared by scan, gc and tag retention, so two never run at once "
        f"(default: ${LOCK_FILE_ENV} or {DEFAULT_LOCK_FILE})",
    )
    parser.add_argument(
        "--lock-wait",
        type=seconds,
        default=DEFAULT_LOCK_WAIT,
        metavar="SECONDS",
        help="how long to wait for another run to finish before giving up with exit 2 (default: %(default)g)",
    )


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _error(message: str) -> None:
    sys.stderr.write(f"ERROR {message}\n")
    sys.stderr.flush()


def run_scan(arguments: argparse.Namespace) -> int:
    started = time.time()
    try:
        with host_lock("storage scan", arguments.lock_file, arguments.lock_wait):
            result = scan_storage(
                arguments.storage_root,
                repositories=arguments.repository,
                min_age=arguments.min_age,
                on_finding=lambda finding: _print(finding.log_line()),
            )
    except (ScanError, HostLockError, RecursionError, MemoryError) as error:
        message = str(error) if isinstance(error, (ScanError, HostLockError)) else (
            f"storage {arguments.storage_root} could not be scanned: {type(error).__name__}"
        )
        _error(message)
        # Written anyway, so monitoring shows the failed scan instead of the last good one.
        _write_outputs(arguments, failed_scan_report(arguments.storage_root, message, started),
                       failed_scan_metrics(started))
        return SCAN_FAILED
    _print(result.summary_line())
    if not _write_outputs(arguments, result.as_report(), scan_metrics(result)):
        return SCAN_FAILED
    return SCAN_CLEAN if result.clean else SCAN_FINDINGS


def _write_outputs(arguments: argparse.Namespace, report: t.Mapping[str, t.Any], metrics: t.List[Metric],
                   with_report: bool = True) -> bool:
    problem = write_report_files(arguments.json_report if with_report else None, report, arguments.metrics_file,
                                 metrics)
    if problem:
        _error(problem)
    return problem is None


def run_gc(arguments: argparse.Namespace) -> int:
    options = GCOptions(
        storage_root=arguments.storage_root,
        config_path=arguments.config,
        config_on_host=arguments.config_on_host,
        storage_root_in_config=arguments.storage_root_in_config,
        delete_untagged=arguments.delete_untagged,
        gc_command=tuple(arguments.gc_command),
        before_command=tuple(arguments.before_command),
        after_command=tuple(arguments.after_command),
        check_mode=arguments.dry_run,
        timeout=arguments.timeout or 3600.0,
        gc_timeout=arguments.gc_timeout,
        gc_stop_command=tuple(arguments.gc_stop_command),
        registry_offline=arguments.registry_offline,
    )
    try:
        with host_lock("guarded garbage collection", arguments.lock_file, arguments.lock_wait):
            if arguments.metrics_file and not options.check_mode:
                # Planned maintenance, said before the registry stops: the probe's rules hold their
                # "registry unreadable" alert until the run's time limit, and page once it overruns.
                if not _write_outputs(arguments, {}, running_metrics(options, time.time()), with_report=False):
                    return FAILED
            outcome = run_guarded_gc(options)
    except (GCGuardError, HostLockError) as error:
        # Nothing ran; the report and metrics still say so, so monitoring does not show the last run's state.
        outcome = GCOutcome(options)
        outcome.failure_kind = "locked" if isinstance(error, HostLockError) else "options"
        outcome.message = str(error)
    for line in outcome.log_lines():
        _print(line)
    if outcome.status == "error":
        _error(outcome.message)
    if not _write_outputs(arguments, outcome.as_dict(), outcome.metrics()):
        return FAILED
    return outcome.exit_code


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.command == "scan":
        return run_scan(arguments)
    return run_gc(arguments)


if __name__ == "__main__":
    raise SystemExit(main())
