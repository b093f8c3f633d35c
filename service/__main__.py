"""``python -m service``: the development server (aiohttp's own runner, one process).

``python -m service migrate`` applies the migrations to ``DATABASE_PATH`` and exits; the production
entrypoint runs it before Litestream starts, so that the database exists for Litestream to follow.
"""

import logging
import sys

from aiohttp import web

from service.app import create_app
from service.db import SchemaTooNew, migrate
from service.logs import configure_logging
from service.settings import Config, ConfigError

log = logging.getLogger("service")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        config = Config.from_env()
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    configure_logging(config.logging_level)
    if args == ["migrate"]:
        try:
            version = migrate(config.database_path)
        except SchemaTooNew as exc:
            sys.exit(f"refusing to start: {exc}")
        log.info("database ready", extra={"database": str(config.database_path), "version": version})
        return
    if args:
        sys.exit("usage: python -m service [migrate]")
    log.info("serving", extra={"url": f"http://{config.host}:{config.port}"})
    web.run_app(
        create_app(config),
        host=config.host,
        port=config.port,
        access_log=None,
        print=None,
        shutdown_timeout=config.shutdown_timeout,
    )


if __name__ == "__main__":
    main()
