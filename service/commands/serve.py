"""``serve``: the development server, aiohttp's own runner in one process, no replication."""

import argparse
import logging

from service.commands.common import configured
from service.settings import SERVICE_SETTINGS

NAME = "serve"
HELP = "the development server alone (aiohttp's runner, no replication); the default command"
# No arguments: HOST, PORT and the rest come from the environment.
SETTINGS = SERVICE_SETTINGS

log = logging.getLogger("service")


def run(args: argparse.Namespace) -> int:
    from service.http.app import create_app
    from service.http.server import exit_if_threads_linger
    from service.http.server import run as serve_app

    config = configured()
    url = f"http://{config.host}:{config.port}"
    try:
        serve_app(create_app(config), config, started=lambda: log.info("serving", extra={"url": url}))
    except Exception as exc:
        # One JSON line (the traceback as a field), then a non-zero exit, never a hang.
        log.error("start-up failed", exc_info=exc)
        exit_if_threads_linger(1)
        return 1
    return 0
