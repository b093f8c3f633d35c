"""``replica-url``: where REPLICA_URL's data is, following the writer lease to its generation."""

import argparse
import sys
from datetime import UTC, datetime

NAME = "replica-url"
HELP = (
    "print the URL that holds REPLICA_URL's data: the generation the writer lease names, or the one "
    "being written at --at TIME (for point-in-time restores)"
)
SETTINGS = ("REPLICA_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")


def _time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--at", type=_time, metavar="TIME", help="an RFC 3339 time, e.g. 2026-11-22T14:05:00Z"
    )


def run(args: argparse.Namespace) -> int:
    from service.settings import ConfigError, environment, replica_url_from_env
    from service.stack.lease import current_replica_url
    from service.stack.replica import ReplicaUnavailable

    try:
        replica_url = replica_url_from_env()
    except ConfigError as exc:
        sys.stderr.write(f"replica-url: error: {exc}\n")
        return 2
    try:
        print(current_replica_url(replica_url, environment(), args.at))
    except (ReplicaUnavailable, ValueError) as exc:
        sys.stderr.write(f"replica-url: error: could not read the writer lease of {replica_url}: {exc}\n")
        return 1
    return 0
