"""The command line as Python users expect it: --help lists the commands, every command has --help with
its arguments and the settings it reads, --version, usage errors exit 2 with a message on stderr."""

import subprocess
import sys
from types import ModuleType

import pytest

from service import __version__
from service.commands import COMMANDS


def _cli(*args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [sys.executable, "-m", "service", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_help_lists_every_command() -> None:
    result = _cli("--help")
    assert result.returncode == 0, result.stderr
    for module in COMMANDS:
        assert module.NAME in result.stdout
    assert "Linux only" in result.stdout


@pytest.mark.parametrize("module", COMMANDS, ids=lambda module: str(module.NAME))
def test_every_command_has_help_with_its_settings(module: ModuleType) -> None:
    name = str(module.NAME)
    settings: tuple[str, ...] = module.SETTINGS
    result = _cli(name, "--help")
    assert result.returncode == 0, result.stderr
    assert f"python -m service {name}" in result.stdout
    for setting in settings:
        assert setting in result.stdout, f"{setting} missing from {name} --help"


def test_version() -> None:
    result = _cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"hello-birthday {__version__}"


@pytest.mark.parametrize(
    "args",
    [("bogus",), ("copy-data", "--from"), ("copy-data", "--from", "a.db"), ("replica-url", "--at", "x")],
)
def test_usage_errors_exit_2_with_a_message_on_stderr(args: tuple[str, ...]) -> None:
    result = _cli(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr and "error:" in result.stderr
    assert result.stdout == ""


def test_supervise_help_is_not_taken_for_its_root() -> None:
    result = _cli("supervise", "--help")
    assert result.returncode == 0 and "REPLICA_URL is not set" not in result.stderr
    assert "REPLICA_URL" in result.stdout and "ROOT" in result.stdout


def test_the_console_script_is_the_same_command_line() -> None:
    from pathlib import Path

    script = Path(sys.executable).with_name("hello-birthday")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and __version__ in result.stdout
