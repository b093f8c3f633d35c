"""Every request: an id, one JSON log line, metrics; every error: a problem+json answer."""

import logging
import re
import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler

from service import keys
from service.problems import InternalError, Problem, from_http_exception

log = logging.getLogger("service.access")
errors = logging.getLogger("service.errors")

# An id from the edge proxy is kept only if it is short and plain, since it is echoed and logged.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _request_id(request: web.Request) -> str:
    for header in ("Fly-Request-Id", "X-Request-Id"):
        value = request.headers.get(header, "")
        if _REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


def _route(request: web.Request) -> str:
    """The route template, never the raw path, so that metric labels stay few."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    request_id = _request_id(request)
    request[keys.REQUEST_ID] = request_id
    response = await handler(request)
    response.headers["X-Request-Id"] = request_id
    seconds = time.perf_counter() - started
    route = _route(request)
    request.app[keys.METRICS].observe_request(route, request.method, response.status, seconds)
    log.info(
        "request",
        extra={
            "method": request.method,
            "route": route,
            "path": request.path,
            "status": response.status,
            "duration_ms": round(seconds * 1000, 3),
            "request_id": request_id,
        },
    )
    return response


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request[keys.REQUEST_ID]
    try:
        return await handler(request)
    except Problem as problem:
        return problem.response(request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return from_http_exception(exc).response(request_id)
    except Exception:
        # The client learns only that it failed and which id to quote; the log has the rest.
        errors.exception("unhandled error", extra={"request_id": request_id})
        return InternalError("internal error; quote the request id when reporting it").response(request_id)
