"""``migrate``: apply the migrations and exit (the PostgreSQL profile's release step)."""

import argparse
import asyncio
import logging
import sys

from service.commands.common import configured
from service.settings import DATABASE_SETTINGS

NAME = "migrate"
HELP = (
    "apply the migrations to DATABASE_PATH, or to the PostgreSQL database of DATABASE_URL (under an "
    "advisory lock), and exit"
)
# No arguments: the database comes from the environment.
SETTINGS = DATABASE_SETTINGS

log = logging.getLogger("service")


def run(args: argparse.Namespace) -> int:
    from service.store import SchemaTooNew, StoreUnavailable, migrate_store

    config = configured()
    try:
        where, version = asyncio.run(migrate_store(config))
    except SchemaTooNew as exc:
        sys.stderr.write(f"refusing to start: {exc}\n")
        return 1
    except StoreUnavailable as exc:
        sys.stderr.write(f"cannot migrate: {exc}\n")
        return 1
    log.info("database ready", extra={"database": where, "version": version})
    return 0
