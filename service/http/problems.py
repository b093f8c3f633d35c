"""Errors as RFC 9457 problem details: the few kinds the service raises, and their JSON shape."""

import json
from http import HTTPStatus
from typing import ClassVar

from aiohttp import web

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error the client can act on; ``detail`` says what was wrong and what is accepted."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"
    slug: ClassVar[str] = "internal-error"

    # After answering, close the connection: what the client sends next cannot be trusted to
    # start a request (a body left half-read, a head that could not be parsed).
    close_connection: ClassVar[bool] = False

    def __init_subclass__(
        cls, *, status: int = 500, slug: str = "internal-error", title: str = "", close: bool = False
    ) -> None:
        """A kind of problem: ``class NotFound(Problem, status=404, slug="not-found")``; the title is
        the status's reason phrase unless given."""
        cls.status = status
        cls.slug = slug
        cls.title = title or HTTPStatus(status).phrase
        cls.close_connection = close

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}

    def body(self, request_id: str) -> bytes:
        document = {
            "type": f"/problems/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "requestId": request_id,
        }
        return json.dumps(document).encode()

    def response(self, request_id: str) -> web.Response:
        response = web.Response(
            status=self.status,
            body=self.body(request_id),
            content_type=PROBLEM_JSON,
            headers=self.headers,
        )
        if self.close_connection:
            response.force_close()
        return response

    def raw_response(self, request_id: str) -> bytes:
        """The whole HTTP/1.1 answer as bytes, for a connection that never became a request."""
        body = self.body(request_id)
        head = [
            f"HTTP/1.1 {self.status} {self.title}",
            f"Content-Type: {PROBLEM_JSON}",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers.items()),
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class InvalidInput(Problem, status=400, slug="invalid-input"):
    """A username or date of birth the contract does not accept."""


class MalformedRequest(Problem, status=400, slug="malformed-request", close=True):
    """A request aiohttp's parser refused: a line too long, a bad header, not HTTP at all."""


class NotFound(Problem, status=404, slug="not-found"):
    """No such resource, or no such user."""


class MethodNotAllowed(Problem, status=405, slug="method-not-allowed"):
    """A method the resource does not take; ``Allow`` lists those it does."""


class PayloadTooLarge(Problem, status=413, slug="payload-too-large", title="Content Too Large"):
    """A body over the 1 KiB limit."""


class RequestTimeout(Problem, status=408, slug="request-timeout", close=True):
    """The head or the body did not arrive in time (HEADER_TIMEOUT, BODY_TIMEOUT)."""


class ClientClosedRequest(
    Problem, status=499, slug="client-closed-request", title="Client Closed Request", close=True
):
    """The client went away before its request was whole (nginx's 499): nobody reads this answer;
    it exists so that the request is logged and counted as the client's doing, not as a 500."""


class UnsupportedMediaType(Problem, status=415, slug="unsupported-media-type"):
    """A body that is not JSON."""


class ServiceUnavailable(Problem, status=503, slug="unavailable"):
    """Not now: the store, the replication or the writer lease; ``Retry-After`` says when."""


class InsufficientStorage(Problem, status=507, slug="disk-full"):
    """The disk is full: the write was not stored; the client may retry after ``Retry-After``."""


class InternalError(Problem):
    """Anything unexpected: the answer says no more than that; the log has the rest."""


class TooManyConnections(Problem, status=503, slug="too-many-connections", close=True):
    """MAX_CONNECTIONS are open: answered at once, before reading a request."""


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
