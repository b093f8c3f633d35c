"""``python -m service``: the development server (aiohttp's own runner, one process)."""

import logging
import sys

from aiohttp import web

from service.app import create_app
from service.logs import configure_logging
from service.settings import Config, ConfigError


def main() -> None:
    try:
        config = Config.from_env()
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    configure_logging(config.logging_level)
    logging.getLogger(__name__).info("serving", extra={"url": f"http://{config.host}:{config.port}"})
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
