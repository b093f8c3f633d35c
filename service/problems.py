"""Errors as RFC 9457 problem details: the few kinds the service raises, and their JSON shape."""

import json
from typing import ClassVar

from aiohttp import web

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error the client can act on; ``detail`` says what was wrong and what is accepted."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"
    slug: ClassVar[str] = "internal-error"

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}

    def response(self, request_id: str) -> web.Response:
        body = {
            "type": f"/problems/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "requestId": request_id,
        }
        return web.Response(
            status=self.status,
            body=json.dumps(body).encode(),
            content_type=PROBLEM_JSON,
            headers=self.headers,
        )


class InvalidInput(Problem):
    status = 400
    title = "Bad Request"
    slug = "invalid-input"


class NotFound(Problem):
    status = 404
    title = "Not Found"
    slug = "not-found"


class MethodNotAllowed(Problem):
    status = 405
    title = "Method Not Allowed"
    slug = "method-not-allowed"


class PayloadTooLarge(Problem):
    status = 413
    title = "Content Too Large"
    slug = "payload-too-large"


class UnsupportedMediaType(Problem):
    status = 415
    title = "Unsupported Media Type"
    slug = "unsupported-media-type"


class ServiceUnavailable(Problem):
    status = 503
    title = "Service Unavailable"
    slug = "unavailable"


class InternalError(Problem):
    pass


class HttpProblem(Problem):
    """Any other HTTP error, with its status and reason as they are."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status  # type: ignore[misc]
        self.title = reason  # type: ignore[misc]


def from_http_exception(exc: web.HTTPException) -> Problem:
    """The router's own errors (no such path, wrong method, body too large) as problems."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return MethodNotAllowed(
            f"{exc.method} is not allowed here; allowed: {allowed}", headers={"Allow": allowed}
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge('the request body is larger than 1 KiB; send {"dateOfBirth": ...}')
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("no such resource; the API is /hello/<username>")
    return HttpProblem(exc.status, exc.reason)
