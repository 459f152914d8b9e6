# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pytest plugin (loaded from tests/pytest.ini): a run with a skipped test is a failed run.

The house rule is that a real part which cannot start fails its test. A skip would turn a missing
registry, Docker engine or sshd into a green CI run, so every skip is reported by name and the run
exits 1. The standard summary line stays the last line of the output.
"""

from __future__ import annotations

import pytest


class SkipsFailTheRun:
    """Collects skipped tests and modules of one session; registered once per session."""

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Remember every skipped test (an expected failure that failed is not a skip)."""
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skipped.append(report.nodeid)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        """A whole module skipped at import (pytest.importorskip, allow_module_level) counts too."""
        if report.skipped:
            self.skipped.append(report.nodeid)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Turn a run that skipped tests into a failed run."""
        if self.skipped and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Name the skipped tests just before the summary line."""
        if self.skipped:
            terminalreporter.section("skipped tests fail this run", sep="=", red=True, bold=True)
            for nodeid in self.skipped:
                terminalreporter.line(f"SKIPPED counts as a failure: {nodeid}")


def pytest_configure(config: pytest.Config) -> None:
    """Register on the process that reports (under pytest-xdist, the controller, not the workers)."""
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(SkipsFailTheRun(), "selfhosted-registry-skips-fail-the-run")
