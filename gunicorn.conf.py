"""Production server: ``gunicorn -c gunicorn.conf.py`` alone starts the service.

One worker process: SQLite has one writer, and a single asyncio worker serves all connections.
"""

import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from service.http import keys
from service.http.server import exit_if_threads_linger, make_runner
from service.logs import JsonLinesOnly
from service.settings import Config
from service.stack.parent_death import die_with_parent

_config = Config.from_env()

wsgi_app = "service.http.app:app_factory"
# The SQLite profile runs aiohttp's worker on uvloop's event loop: 6-11% less CPU per request than on
# asyncio's own loop, every drill passing. The PostgreSQL profile stays on asyncio's loop: on uvloop a
# few requests waited far longer than the rest (GET p99 868 ms against 18 ms, p50 3.6 against 11.9 ms).
# docs/benchmarks.md has both runs. GUNICORN_CMD_ARGS="--worker-class ..." overrides either.
worker_class = "aiohttp.GunicornWebWorker" if _config.database_url else "aiohttp.GunicornUVLoopWebWorker"
workers = 1
bind = [f"[{_config.host}]:{_config.port}" if ":" in _config.host else f"{_config.host}:{_config.port}"]

# On SIGTERM the worker stops accepting, lets requests in flight finish for up to this long, then
# closes the database. Fly's kill_timeout must exceed this plus Litestream's shutdown sync.
graceful_timeout = int(_config.shutdown_timeout)
# A worker that does not check in for this long is killed and replaced.
timeout = 30
keepalive = 75

# The service writes its own JSON access line per request; gunicorn's own messages go to stderr.
accesslog = None
errorlog = "-"
loglevel = _config.log_level.lower()
# One log format for the whole stack: gunicorn's own lines (the master's start and stop, a worker's
# failed boot with its traceback in the "error" field) are JSON objects, one a line, on standard
# error, like the service's (service/logs.py).
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "service.logs.JsonFormatter"}},
    "handlers": {
        "json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    },
    "root": {"level": _config.log_level, "handlers": ["json"]},
    "loggers": {
        "gunicorn.error": {"level": _config.log_level, "handlers": ["json"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
    },
}

proc_name = "hello-birthday"
forwarded_allow_ips = _config.forwarded_allow_ips
# gunicorn's run-time control socket is not used, and would need a writable home directory.
control_socket_disable = True


def post_fork(server: Any, worker: Any) -> None:
    """The worker dies with the master: killed with it (its supervisor gone), it must not keep the port.
    Its standard error stays JSON lines: gunicorn also prints a boot error there as a plain line."""
    die_with_parent(server.pid)
    sys.stderr = JsonLinesOnly(sys.stderr, logger="gunicorn.error")


def post_worker_init(worker: Any) -> None:
    """Answer /readyz with 503 from the moment SIGTERM arrives.

    The aiohttp worker notices SIGTERM at its next tick (up to a second later) and only then stops
    accepting; in between, requests are still served, but readiness already says "going away".
    The worker builds a plain ``AppRunner`` unless the factory returns a runner: it gets the
    service's guarded one (service/http/server.py), with the options the worker would have used.
    """
    make_app: Callable[[], Awaitable[web.Application]] = worker.wsgi
    # The listening sockets as plain socket objects, not gunicorn's wrappers: uvloop takes over a
    # plain socket's descriptor (detaching it) and closes it when the site stops; through the wrapper
    # it closed the descriptor and then the wrapper's socket again, which failed at every stop with
    # "Error while closing socket [Errno 9] Bad file descriptor".
    worker.sockets = [getattr(listener, "sock", listener) for listener in worker.sockets]

    async def runner_that_drains_on_sigterm() -> web.AppRunner:
        app = await make_app()

        def on_sigterm() -> None:
            app[keys.STATE].draining = True
            worker.handle_exit(signal.SIGTERM, None)

        worker.loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        return make_runner(
            app,
            app[keys.CONFIG],
            logger=worker.log,
            keepalive_timeout=worker.cfg.keepalive,
            access_log=None,
            shutdown_timeout=worker.cfg.graceful_timeout / 100 * 95,
        )

    worker.wsgi = runner_that_drains_on_sigterm


def worker_exit(server: Any, worker: Any) -> None:
    """A worker that failed to boot exits with gunicorn's boot-error code, so that the master stops
    too (and the platform restarts the machine), even if a thread would keep it alive."""
    if not worker.booted:
        exit_if_threads_linger(server.WORKER_BOOT_ERROR)
