"""The HTTP server around the application: aiohttp's runner and connection handler, hardened.

aiohttp has no option for four things the service needs, so they are added here:

- **A start-up that fails releases what it acquired.** aiohttp runs the clean-up of a ``cleanup_ctx``
  only when someone calls ``runner.cleanup()``, and neither gunicorn's aiohttp worker nor
  ``web.run_app`` does when ``runner.setup()`` raises: the store's threads then keep the process
  alive for ever. ``HardenedAppRunner.setup`` cleans up before it re-raises.
- **Slow clients are bounded.** A request head must be whole within ``HEADER_TIMEOUT`` of the
  connection opening (or of its first byte after a keep-alive pause), else 408 and the connection
  is closed; at most ``MAX_CONNECTIONS`` connections are open (never more than the open-files
  limit leaves room for), others get 503 at once.
- **Parser errors are problems.** A request aiohttp cannot parse (a 100 KB URL, a malformed header,
  not HTTP) is answered with problem+json, logged as one JSON line and counted, route ``parser``.
- **Connection-level events are logged at a bounded rate**: ``accept()`` failing for lack of open
  files, head time-outs and refused connections give at most one line a second each, with a count.
"""

import asyncio
import logging
import os
import resource
import threading
from collections.abc import Callable
from contextlib import suppress
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web, web_protocol, web_server
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_runner import GracefulExit

from service.http import keys
from service.http.metrics import Metrics
from service.http.middlewares import route_label
from service.http.problems import (
    HttpProblem,
    InternalError,
    MalformedRequest,
    Problem,
    RequestTimeout,
    TooManyConnections,
)
from service.settings import Config

log = logging.getLogger(__name__)
access = logging.getLogger("service.access")
errors = logging.getLogger("service.errors")

# Open files kept free of client connections: the database, its WAL and shared memory on three
# connections, the listeners, the log streams, aiosqlite's and asyncio's own descriptors.
RESERVED_FILES = 64
# The message asyncio's selector loop gives when accept() fails with EMFILE, ENFILE, ENOBUFS or
# ENOMEM; the loop then stops accepting on that listener for a second and tries again.
ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"
# Metric labels of what happens before a request exists.
PARSER_ROUTE = "parser"
CONNECTION_ROUTE = "connection"
NO_METHOD = "UNKNOWN"
# A reason from the parser can quote the offending bytes; the log and the answer keep this much.
_REASON_CHARS = 200


class RateLimitedLog:
    """One log line per ``interval`` at most for a kind of event, with how many happened.

    The first event is logged at once; the ones that follow within the interval are counted and
    logged together as one line when it ends.
    """

    def __init__(self, logger: logging.Logger, level: int, message: str, interval: float = 1.0) -> None:
        self._logger = logger
        self._level = level
        self._message = message
        self._interval = interval
        self._count = 0
        self._fields: dict[str, Any] = {}
        self._timer: asyncio.TimerHandle | None = None

    def note(self, **fields: Any) -> None:
        self._count += 1
        self._fields = fields
        if self._timer is None:
            self._flush()

    def _flush(self) -> None:
        self._timer = None
        if self._count == 0:
            return
        self._logger.log(
            self._level,
            self._message,
            extra={"count": self._count, "interval_seconds": self._interval, **self._fields},
        )
        self._count = 0
        with suppress(RuntimeError):  # no running loop: the next event logs at once
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._flush)


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def connection_cap(config: Config, open_files_limit: int) -> int:
    """MAX_CONNECTIONS, lowered if the open-files limit leaves no room for that many."""
    room = max(open_files_limit - RESERVED_FILES, 1)
    if config.max_connections > room:
        log.warning(
            "MAX_CONNECTIONS lowered to fit the open-files limit",
            extra={
                "max_connections": config.max_connections,
                "open_files_limit": open_files_limit,
                "cap": room,
            },
        )
        return room
    return config.max_connections


class ConnectionLimits:
    """What every connection of one server shares: the limits, the count, the metrics, the logs."""

    def __init__(self, metrics: Metrics, cap: int, header_timeout: float) -> None:
        self.metrics = metrics
        self.cap = cap
        self.header_timeout = header_timeout
        self.open = 0
        self.refused = RateLimitedLog(
            log, logging.WARNING, "connections refused: MAX_CONNECTIONS are open", interval=1.0
        )
        self.head_timeouts = RateLimitedLog(
            log, logging.INFO, "connections closed: no whole request head within HEADER_TIMEOUT", interval=1.0
        )

    def new_request_id(self) -> str:
        return os.urandom(16).hex()


# How long a stopping server waits for the first request of a connection it accepted just before it
# stopped listening: served rather than dropped, since its client already sent it.
_FIRST_REQUEST_GRACE = 0.5


class _HardenedRequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, with the connection cap, the head timeout and problem+json
    for what its parser refuses.

    It reads a few of the base class's private fields (``_request_count``, ``_messages``,
    ``_request_in_progress``, ``_manager``): aiohttp is pinned, and tests/test_server.py and the
    slow-client drill fail if their meaning changes.
    """

    _limits: ConnectionLimits
    _counted: bool
    _head_timer: asyncio.TimerHandle | None
    _requests_at_head_start: int

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        limits = self._limits = cast(_HardenedServer, self._manager).limits
        self._head_timer = None
        limits.open += 1
        self._counted = True
        if limits.open > limits.cap:
            self._refuse(TooManyConnections("too many connections are open; retry", {"Retry-After": "1"}))
            limits.metrics.observe_request(CONNECTION_ROUTE, NO_METHOD, TooManyConnections.status, 0.0)
            limits.refused.note(open_connections=limits.open - 1, max_connections=limits.cap)
            return
        self._start_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        if getattr(self, "_counted", False):
            self._counted = False
            self._limits.open -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        requests_before = self._request_count
        super().data_received(data)
        if self._request_count != requests_before:
            self._stop_head_timer()  # a whole head arrived
        elif self._head_timer is None and not self._request_in_progress and not self._messages:
            self._start_head_timer()  # the first bytes of a new head, after a keep-alive pause

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        """Close a connection that has no request to finish at once, then shut down as aiohttp does.

        A connection accepted in the last moment before the listener closed can reach this with its
        request's bytes still on the way. It gets up to ``_FIRST_REQUEST_GRACE`` for that request to
        arrive, which is then served; after that, and for any connection with nothing to finish, the
        connection is closed at once: once shutting down aiohttp reads nothing more from it, so it
        would otherwise hold the worker for the whole graceful timeout (seen under write load: a 10 s
        stop instead of 1 s).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _FIRST_REQUEST_GRACE
        while self._request_count == 0 and self.transport is not None and loop.time() < deadline:
            await asyncio.sleep(0.01)  # a connection accepted a moment ago: its request is on the way
        if not self._request_in_progress and not self._messages:
            self.force_close()
        await super().shutdown(timeout)

    def _start_head_timer(self) -> None:
        self._requests_at_head_start = self._request_count
        self._head_timer = self._loop.call_later(self._limits.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        waiting_for_head = (
            self._request_count == self._requests_at_head_start
            and not self._request_in_progress
            and not self._messages
            and self.transport is not None
        )
        if not waiting_for_head:
            return
        limits = self._limits
        seconds = limits.header_timeout
        self._refuse(RequestTimeout(f"no whole request head within {seconds:g} s; send it at once"))
        limits.metrics.observe_request(CONNECTION_ROUTE, NO_METHOD, RequestTimeout.status, seconds)
        limits.head_timeouts.note(header_timeout_seconds=seconds)

    def _refuse(self, problem: Problem) -> None:
        """Answer a connection that never became a request, and close it."""
        if self.transport is not None:
            self.transport.write(problem.raw_response(self._limits.new_request_id()))
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """What aiohttp answers itself: a request its parser refused, or an error outside the
        middleware. A problem document, one JSON log line, and a count."""
        if request.writer.output_size > 0:  # as aiohttp: part of an answer is out already
            raise ConnectionError("the response was partly sent; no error answer is possible")
        request_id = self._limits.new_request_id()
        problem: Problem
        if isinstance(exc, HttpProcessingError):  # only the parser raises these
            reason = str(exc.message or message)[:_REASON_CHARS]
            route, method = PARSER_ROUTE, NO_METHOD
            if status == MalformedRequest.status:
                problem = MalformedRequest(f"the request could not be parsed: {reason}")
            else:
                problem = HttpProblem(status, reason)
            access.info(
                "request refused by the parser",
                extra={
                    "route": route,
                    "status": status,
                    "error": reason,
                    "error_type": type(exc).__name__,
                    "remote": request.remote,
                    "request_id": request_id,
                },
            )
        else:
            route = route_label(request) if isinstance(request, web.Request) else "unmatched"
            method = request.method
            if status >= 500:
                errors.error(
                    "error outside the request middleware",
                    exc_info=exc,
                    extra={"route": route, "status": status, "request_id": request_id},
                )
            if status == InternalError.status:
                problem = InternalError("internal error; quote the request id when reporting it")
            else:
                problem = HttpProblem(status, message or HTTPStatus(status).phrase)
        self._limits.metrics.observe_request(route, method, problem.status, 0.0)
        response = problem.response(request_id)
        response.force_close()
        return response


class _HardenedServer(web_server.Server):
    """aiohttp's connection factory, making ``_HardenedRequestHandler`` connections."""

    limits: ConnectionLimits

    def __call__(self) -> web_protocol.RequestHandler:
        return _HardenedRequestHandler(self, loop=self._loop, **self._kwargs)

    def pre_shutdown(self) -> None:
        """Close the idle connections, as aiohttp does, but not those still waiting for their first
        request: it may be on the way, and ``_HardenedRequestHandler.shutdown`` gives it a moment."""
        for conn in self._connections:
            if conn._request_count > 0:
                conn.close()


class HardenedAppRunner(web.AppRunner):
    """An ``AppRunner`` whose failed start-up releases what it had acquired, and whose connections
    are hardened (``_HardenedRequestHandler``)."""

    def __init__(self, app: web.Application, *, cap: int, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._cap = cap
        self._header_timeout = header_timeout

    async def setup(self) -> None:
        limit_accept_error_logs(asyncio.get_running_loop())
        try:
            await super().setup()
        except BaseException as exc:
            log.error(
                "start-up failed; releasing what it had acquired",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )
            try:
                await self.cleanup()
            except Exception as cleanup_exc:
                log.error("clean-up after the failed start-up failed too", extra={"error": repr(cleanup_exc)})
            raise

    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()  # runs the application's start-up
        # aiohttp's Server builds its connection handlers itself: make it build ours. Same class
        # layout, one method overridden, so only the class changes.
        server.__class__ = _HardenedServer
        hardened = cast(_HardenedServer, server)
        hardened.limits = ConnectionLimits(self.app[keys.METRICS], self._cap, self._header_timeout)
        return hardened


def limit_accept_error_logs(loop: asyncio.AbstractEventLoop) -> None:
    """Log accept() failing for lack of resources at most once a second, with a count."""
    previous = loop.get_exception_handler()
    accept_errors = RateLimitedLog(
        log, logging.WARNING, "accept() failed: out of open files or memory; new connections wait"
    )

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_OUT_OF_RESOURCES:
            accept_errors.note(error=str(context.get("exception")))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def make_runner(app: web.Application, config: Config, **runner_options: Any) -> HardenedAppRunner:
    """The runner for the public port, for gunicorn's worker and ``python -m service`` alike."""
    cap = connection_cap(config, raise_open_files_limit())
    return HardenedAppRunner(app, cap=cap, header_timeout=config.header_timeout, **runner_options)


def exit_if_threads_linger(code: int) -> None:
    """Exit now with ``code`` if a thread other than this one would keep the process alive.

    After a failed start-up the clean-up above closes the store's threads; should any step still
    leave one running, the process must exit anyway rather than hang.
    """
    current = threading.current_thread()
    lingering = [t.name for t in threading.enumerate() if t is not current and t.is_alive() and not t.daemon]
    if lingering:
        log.error("threads still running after a failed start-up; exiting", extra={"threads": lingering})
        logging.shutdown()
        os._exit(code)


async def _serve(app: web.Application, config: Config, started: Callable[[], None]) -> None:
    runner = make_runner(
        app, config, handle_signals=True, access_log=None, shutdown_timeout=config.shutdown_timeout
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port).start()
        started()
        await asyncio.Future()  # until SIGINT or SIGTERM raises GracefulExit in the loop
    finally:
        await runner.cleanup()


def run(app: web.Application, config: Config, started: Callable[[], None] = lambda: None) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully (as ``web.run_app``, with the hardened
    runner). A failed start-up raises, once its clean-up has run."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(app, config, started))
    try:
        loop.run_until_complete(main)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():  # a stop signal: let the runner's clean-up finish the requests
                main.cancel()
                with suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            others = asyncio.all_tasks(loop)
            for task in others:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*others, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
