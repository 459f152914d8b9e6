# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import argparse

import pytest

from ansible_collections.selfhosted.registry.plugins.module_utils._cli_arguments import (
    OneLineParser,
    seconds,
    whole_number,
)


@pytest.mark.parametrize("minimum, text, value", [(1, "1", 1), (1, "8", 8), (0, "0", 0), (0, "300", 300)])
def test_whole_number_accepts_the_bound_and_above(minimum, text, value):
    assert whole_number(minimum)(text) == value


@pytest.mark.parametrize(
    "minimum, text, message",
    [
        (1, "0", "'0' is less than 1"),
        (0, "-1", "'-1' is less than 0"),
        (1, "1.5", "'1.5' is not a whole number"),
        (0, "soon", "'soon' is not a whole number"),
    ],
)
def test_whole_number_names_the_text_and_the_bound(minimum, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as raised:
        whole_number(minimum)(text)
    assert str(raised.value) == message


def test_seconds_takes_fractions_and_zero():
    assert seconds("0") == 0.0
    assert seconds("2.5") == 2.5


@pytest.mark.parametrize("text, message", [("-5", "'-5' is negative"), ("soon", "'soon' is not a number of seconds")])
def test_seconds_refuses_negative_and_non_numbers(text, message):
    with pytest.raises(argparse.ArgumentTypeError) as raised:
        seconds(text)
    assert str(raised.value) == message


def test_a_bad_command_line_is_one_error_line_and_exit_2(capsys):
    parser = OneLineParser(prog="tool")
    parser.add_argument("--count", type=whole_number(1))
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--count", "0"])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == "ERROR tool: argument --count: '0' is less than 1\n"
    assert captured.out == ""
