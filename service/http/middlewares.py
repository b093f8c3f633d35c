"""Every request: an id, one JSON log line, metrics; every error: a problem+json answer.

Both jobs are one middleware: each middleware layer costs a coroutine and a call per request, and the
problem answers must be counted and logged like any other.
"""

import itertools
import logging
import os
import re
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from service.http.metrics import Metrics
from service.http.problems import InternalError, Problem, from_http_exception
from service.logs import AccessLog
from service.trace import SLOW_REQUEST, TIMELINE

log = logging.getLogger("service.access")
errors = logging.getLogger("service.errors")

# An id from the edge proxy is kept only if it is short and plain, since it is echoed and logged.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def route_label(request: web.Request) -> str:
    """The route template, never the raw path, so that metric labels stay few."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def observe(metrics: Metrics) -> Middleware:
    """The middleware: request id, problem answers, metrics and the access log line."""
    # Generated ids are 32 hex digits: 16 random per process, then a counter. Unique like a UUID4
    # across processes, without a call for random bytes on every request.
    prefix = os.urandom(8).hex()
    counter = itertools.count(1)
    access = AccessLog(log)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        headers = request.headers
        for header in ("Fly-Request-Id", "X-Request-Id"):
            value = headers.get(header)
            if value and _REQUEST_ID.fullmatch(value):
                request_id = value
                break
        else:
            request_id = f"{prefix}{next(counter):016x}"
        try:
            response = await handler(request)
        except Problem as problem:
            response = problem.response(request_id)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = from_http_exception(exc).response(request_id)
        except Exception:
            # The client learns only that it failed and which id to quote; the log has the rest.
            errors.exception("unhandled error", extra={"request_id": request_id})
            response = InternalError("internal error; quote the request id when reporting it").response(
                request_id
            )
        response.headers["X-Request-Id"] = request_id
        seconds = time.perf_counter() - started
        route = route_label(request)
        status = response.status
        metrics.observe_request(route, request.method, status, seconds)
        if seconds >= SLOW_REQUEST and TIMELINE.enabled:
            now = time.time()
            TIMELINE.record("slow", now - seconds, now, status)
        access.request(request.method, route, request.path, status, round(seconds * 1000, 3), request_id)
        return response

    return middleware
