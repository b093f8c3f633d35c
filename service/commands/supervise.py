"""``supervise``: the production stack (scripts/start.sh execs it): boot checks, then Litestream and
gunicorn side by side (``service/stack/supervisor.py``)."""

import argparse
from pathlib import Path

from service.settings import STACK_SETTINGS

NAME = "supervise"
HELP = (
    "run the production stack: lock the volume, take the writer lease, place or restore the database, "
    "then Litestream and gunicorn side by side"
)
SETTINGS = STACK_SETTINGS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "root",
        nargs="?",
        type=Path,
        default=Path("."),
        metavar="ROOT",
        help="the folder with litestream.yml and gunicorn.conf.py (default: the current folder)",
    )


def run(args: argparse.Namespace) -> int:
    from service.stack.supervisor import main

    root: Path = args.root.absolute()
    for name in ("litestream.yml", "gunicorn.conf.py"):
        if not (root / name).is_file():
            raise SystemExit(f"supervise: error: {root / name} does not exist (give ROOT)")
    return main(root)
