# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plugin that makes a skipped test fail the run, exercised on real pytest runs in a subprocess."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

REPOSITORY_ROOT = pathlib.Path(__file__).resolve().parents[2]
SUMMARY_LINE = re.compile(r"^=+ .+ in [0-9.]+s.* =+$")


def run_pytest(tmp_path: pathlib.Path, test_source: str, *options: str) -> subprocess.CompletedProcess[str]:
    """Run pytest with the plugin on one test file; rootdir is tmp_path."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (tmp_path / "test_sample.py").write_text(test_source, encoding="utf-8")
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY_ROOT))
    command = [sys.executable, "-m", "pytest", "-p", "tests.pytest_strict_outcomes", "-p", "no:cacheprovider",
               "-c", str(tmp_path / "pytest.ini"), *options, str(tmp_path)]
    return subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, check=False)


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.rstrip().splitlines()[-1]


def test_a_skipped_test_fails_the_run_and_is_named(tmp_path: pathlib.Path) -> None:
    result = run_pytest(tmp_path, "import pytest\n\ndef test_ok():\n    pass\n\n"
                                  "def test_skip():\n    pytest.skip('no registry')\n")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED
    assert "SKIPPED counts as a failure: test_sample.py::test_skip" in result.stdout
    assert SUMMARY_LINE.match(last_line(result))
    assert "1 passed, 1 skipped" in last_line(result)


def test_a_module_skipped_at_import_fails_the_run(tmp_path: pathlib.Path) -> None:
    (tmp_path / "test_other.py").write_text("def test_ok():\n    pass\n", encoding="utf-8")
    result = run_pytest(tmp_path, "import pytest\n\npytest.importorskip('no_such_module_here')\n\n"
                                  "def test_never_runs():\n    pass\n")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED
    assert "SKIPPED counts as a failure: test_sample.py" in result.stdout


def test_a_run_whose_only_module_is_skipped_is_not_success(tmp_path: pathlib.Path) -> None:
    result = run_pytest(tmp_path, "import pytest\n\npytest.importorskip('no_such_module_here')\n")
    assert result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED
    assert "SKIPPED counts as a failure: test_sample.py" in result.stdout


def test_passing_tests_and_expected_failures_pass(tmp_path: pathlib.Path) -> None:
    result = run_pytest(tmp_path, "import pytest\n\ndef test_ok():\n    pass\n\n"
                                  "@pytest.mark.xfail(reason='known')\ndef test_known():\n    assert False\n")
    assert result.returncode == pytest.ExitCode.OK, result.stdout
    assert "counts as a failure" not in result.stdout
    assert SUMMARY_LINE.match(last_line(result))


def test_failures_keep_their_exit_status(tmp_path: pathlib.Path) -> None:
    result = run_pytest(tmp_path, "import pytest\n\ndef test_bad():\n    assert False\n\n"
                                  "def test_skip():\n    pytest.skip('x')\n")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED


def test_no_tests_is_not_success(tmp_path: pathlib.Path) -> None:
    result = run_pytest(tmp_path, "")
    assert result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED


def test_skips_under_xdist_fail_the_run(tmp_path: pathlib.Path) -> None:
    result = run_pytest(tmp_path, "import pytest\n\ndef test_ok():\n    pass\n\n"
                                  "def test_skip():\n    pytest.skip('no engine')\n", "-n", "2")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED
    assert "SKIPPED counts as a failure: test_sample.py::test_skip" in result.stdout
    assert SUMMARY_LINE.match(last_line(result))
