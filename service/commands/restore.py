"""``restore``: a checked copy of the replica's data in a new file (``scripts/restore.sh`` runs it).

The latest state, or the state as of ``-timestamp`` within the snapshot retention (litestream.yml),
from the generation the writer lease names. The live database is never touched and OUTPUT must not
exist. Prints the restore time, the integrity check, the row count and the newest write with its age.
"""

import argparse
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

NAME = "restore"
HELP = (
    "restore a copy of REPLICA_URL's data (the latest, or as of -timestamp TIME) into OUTPUT, a new "
    "file, check its integrity and say what it holds"
)
SETTINGS = ("REPLICA_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")


class Refused(Exception):
    """A message for standard error, then exit 1."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-timestamp",
        "--timestamp",
        "--at",
        dest="timestamp",
        metavar="TIME",
        help="the state as of this RFC 3339 time (e.g. 2026-11-22T14:05:00Z) instead of the latest",
    )
    parser.add_argument("output", type=Path, metavar="OUTPUT", help="where to write the copy; must not exist")


def run(args: argparse.Namespace) -> int:
    try:
        for line in restore_copy(args.output, args.timestamp):
            print(line)
    except Refused as exc:
        sys.stderr.write(f"restore: error: {exc}\n")
        return 1
    return 0


def restore_copy(output: Path, timestamp: str | None) -> list[str]:
    """Restore, check and describe the copy; ``Refused`` with what went wrong (nothing left behind)."""
    from service.settings import ConfigError, environment, litestream_environment, replica_url_from_env
    from service.stack.lease import current_replica_url
    from service.stack.replica import ReplicaUnavailable

    at = _moment(timestamp) if timestamp else None
    try:
        replica_url = replica_url_from_env()
    except ConfigError as exc:
        raise Refused(str(exc)) from None
    if output.exists() or output.with_name(output.name + "-wal").exists():
        raise Refused(
            f"{output} already exists: give a new file name (a restore never overwrites a database)"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        source = current_replica_url(replica_url, environment(), at)
    except (ReplicaUnavailable, ValueError) as exc:
        raise Refused(f"could not read the writer lease of {replica_url}: {exc}") from None
    if source != replica_url:
        sys.stderr.write(f"restoring from the lease's generation: {source}\n")
    argv = ["litestream", "restore", "-o", str(output), "-integrity-check", "full"]
    if timestamp:
        argv += ["-timestamp", timestamp]
    began = time.monotonic()
    # Litestream's own messages go straight to standard error.
    if (
        subprocess.run([*argv, source], env=litestream_environment(environment()), check=False).returncode
        != 0
    ):
        for leftover in (output, output.with_name(output.name + ".tmp")):
            leftover.unlink(missing_ok=True)
        as_of = f" as of {timestamp}" if timestamp else ""
        raise Refused(f"litestream could not restore from {source}{as_of} (its error is above)")
    elapsed_ms = round((time.monotonic() - began) * 1000)
    return [f"restored: {output} in {elapsed_ms} ms", *_describe(output)]


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Refused(
            f"-timestamp must be an RFC 3339 time such as 2026-11-22T14:05:00Z, not {text!r}"
        ) from None
    if "T" not in text or moment.tzinfo is None:
        raise Refused(
            f"-timestamp must be an RFC 3339 time with its offset, e.g. 2026-11-22T14:05:00Z, not {text!r}"
        )
    return moment


def _describe(copy: Path) -> list[str]:
    from service.store.sqlite import connect_read_only

    connection = connect_read_only(copy)
    try:
        integrity = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        if integrity != ["ok"]:
            raise Refused(f"{copy} failed the integrity check: {'; '.join(integrity[:5])}")
        rows, newest = connection.execute("SELECT count(*), max(updated_at) FROM users").fetchone()
    finally:
        connection.close()
    lines = ["integrity: ok", f"rows: {rows}"]
    if newest is None:
        return [*lines, "newest write: none (no users)"]
    age = datetime.now(UTC) - datetime.fromisoformat(newest)
    return [*lines, f"newest write: {newest} ({age.total_seconds():.0f} s ago)"]
