"""``python -m service``: the development server (aiohttp's own runner, one process).

``python -m service migrate`` applies the migrations to ``DATABASE_PATH`` (or, when ``DATABASE_URL`` is
set, to that PostgreSQL database, under an advisory lock) and exits.

``python -m service replica-url [--at TIME]`` prints the URL that holds ``REPLICA_URL``'s data: the
generation the writer lease names, or the one being written at TIME (RFC 3339), for restores.

``python -m service supervise ROOT`` runs the production stack (scripts/start.sh execs it; ROOT is the
folder with litestream.yml and gunicorn.conf.py): the boot checks, then Litestream and gunicorn side
by side (``service/stack/supervisor.py``).
"""

import asyncio
import logging
import sys
from pathlib import Path

from service.http.app import create_app
from service.http.server import exit_if_threads_linger, run
from service.logs import configure_logging
from service.settings import Config, ConfigError
from service.store import SchemaTooNew, StoreUnavailable, migrate_store

log = logging.getLogger("service")

USAGE = (
    "usage: python -m service "
    "[migrate | supervise ROOT | replica-url [--at TIME] | copy-data --from SOURCE --to TARGET]"
)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["copy-data"]:
        from service.store.copy import main as copy_data

        sys.exit(copy_data(args[1:]))
    if args[:1] == ["replica-url"]:
        sys.exit(_replica_url(args[1:]))
    if args[:1] == ["supervise"]:
        if len(args) != 2:
            sys.exit(USAGE)
        from service.stack.supervisor import (
            main as supervise,  # boto3 and child processes: not for the server
        )

        sys.exit(supervise(Path(args[1])))
    try:
        config = Config.from_env()
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    configure_logging(config.logging_level)
    if args == ["migrate"]:
        try:
            where, version = asyncio.run(migrate_store(config))
        except SchemaTooNew as exc:
            sys.exit(f"refusing to start: {exc}")
        except StoreUnavailable as exc:
            sys.exit(f"cannot migrate: {exc}")
        log.info("database ready", extra={"database": where, "version": version})
        return
    if args:
        sys.exit(USAGE)
    url = f"http://{config.host}:{config.port}"
    try:
        run(create_app(config), config, started=lambda: log.info("serving", extra={"url": url}))
    except Exception as exc:
        # One JSON line (the traceback as a field), then a non-zero exit, never a hang.
        log.error("start-up failed", exc_info=exc)
        exit_if_threads_linger(1)
        sys.exit(1)


def _replica_url(args: list[str]) -> int:
    import os
    from datetime import UTC, datetime

    from service.stack.lease import current_replica_url
    from service.stack.replica import ReplicaUnavailable

    at: datetime | None = None
    if args[:1] == ["--at"] and len(args) == 2:
        try:
            at = datetime.fromisoformat(args[1].replace("Z", "+00:00"))
        except ValueError:
            sys.stderr.write(f"replica-url: --at must be an RFC 3339 time, not {args[1]!r}\n")
            return 2
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
    elif args:
        sys.stderr.write(USAGE + "\n")
        return 2
    replica_url = os.environ.get("REPLICA_URL", "")
    if not replica_url:
        sys.stderr.write("replica-url: REPLICA_URL is not set\n")
        return 2
    try:
        print(current_replica_url(replica_url, os.environ, at))
    except (ReplicaUnavailable, ValueError) as exc:
        sys.stderr.write(f"replica-url: could not read the writer lease of {replica_url}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    main()
