"""``copy-data``: move the users between the two profiles, verified (``service/store/copy.py``)."""

import argparse
import asyncio

NAME = "copy-data"
HELP = (
    "copy every user from one database to another (SQLite file or postgresql:// URL), newest wins, "
    "then verify both sides by count and checksum"
)
SETTINGS: tuple[str, ...] = ()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="SOURCE",
        help="a SQLite file path or postgresql:// URL",
    )
    parser.add_argument(
        "--to", dest="target", required=True, metavar="TARGET", help="a SQLite file path or postgresql:// URL"
    )


def run(args: argparse.Namespace) -> int:
    from service.store.copy import CopyError, copy_data

    try:
        report = asyncio.run(copy_data(args.source, args.target))
    except CopyError as exc:
        print(f"copy-data: failed: {exc}")
        return 1
    print(f"source: {report.source.rows} rows, sha256 {report.source.checksum}")
    print(f"target: {report.target.rows} rows, sha256 {report.target.checksum}")
    print(f"rows written: {report.written}")
    if not report.verified:
        print("copy-data: the target differs from the source: it holds other rows, or newer ones")
        return 1
    print("copy-data: verified, the target holds exactly the source's rows")
    return 0
