"""``python -m service`` (also installed as ``hello-birthday``): one module per command.

Each command module has ``NAME``, ``HELP``, ``SETTINGS`` (the environment variables it reads, listed in
its ``--help``), ``run(args) -> int``, and ``add_arguments(parser)`` when it takes arguments.
argparse answers ``--help`` (exit 0) and usage errors (a message on standard error, exit 2).
"""

import argparse
import sys
import textwrap
from types import ModuleType

from service import __version__
from service.commands import copy_data, migrate, replica_url, restore, serve, supervise

COMMANDS: tuple[ModuleType, ...] = (serve, supervise, migrate, replica_url, restore, copy_data)
PROGRAM = "python -m service"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description=(
            "hello-birthday: stores dates of birth and answers how many days until a user's birthday. "
            "Without a command: serve (the development server). Linux only (pidfd, prctl); on macOS, "
            "use the container."
        ),
        epilog="Every setting is an environment variable; the README's Settings table lists them all.",
    )
    parser.add_argument("--version", action="version", version=f"hello-birthday {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module in COMMANDS:
        sub = commands.add_parser(
            module.NAME,
            help=module.HELP,
            description=textwrap.fill(module.HELP, width=100),
            epilog=_settings_epilog(module.SETTINGS),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if hasattr(module, "add_arguments"):
            module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def _settings_epilog(settings: tuple[str, ...]) -> str:
    if not settings:
        return "settings: none (everything comes from the arguments)"
    lines = ["settings (environment variables; the README's Settings table says what each does):"]
    line = " "
    for name in settings:
        if len(line) + len(name) + 2 > 100:
            lines.append(line.rstrip())
            line = " "
        line += f" {name},"
    lines.append(line.rstrip(","))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    run = getattr(args, "run", None) or serve.run
    sys.exit(run(args))
