"""HTTP handlers: parse and check the request, ask the store, shape the answer. No SQL here."""

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import web

from service.birthdays import InvalidDateOfBirth, greeting, is_valid_username, parse_date_of_birth
from service.contract import MergeTotals
from service.http import keys
from service.http.openapi import OPENAPI_DOCUMENT
from service.http.problems import (
    ClientClosedRequest,
    InvalidInput,
    NotFound,
    RequestTimeout,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from service.http.replication import Unconfirmed
from service.store import StoreUnavailable

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024
_READY_TIMEOUT_SECONDS = 2.0
_RETRY_LATER = {"Retry-After": "5"}
# A GET's answer header as aiohttp writes it for text= with content_type="application/json"; given
# ready-made, with the body already encoded, Response skips parsing and rebuilding it on every GET.
_JSON_UTF8 = {"Content-Type": "application/json; charset=utf-8"}


def _username(request: web.Request) -> str:
    username = request.match_info["username"]
    if not is_valid_username(username):
        raise InvalidInput(f"username {username!r} is not allowed: use 1 to 64 ASCII letters (A-Z, a-z)")
    return username


def _check_content_type(request: web.Request) -> None:
    # No Content-Type at all is accepted; aiohttp reports that as application/octet-stream, so
    # look at the header itself.
    if "Content-Type" in request.headers and request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type {request.headers['Content-Type']!r} is not accepted: send "
            'application/json with a body like {"dateOfBirth": "YYYY-MM-DD"}'
        )


def _date_of_birth_text(body: bytes) -> str:
    try:
        document: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        # RecursionError: nesting deeper than the parser's stack (a few hundred "[" do it).
        raise InvalidInput('the body is not valid JSON: send {"dateOfBirth": "YYYY-MM-DD"}') from None
    if not isinstance(document, dict):
        raise InvalidInput('the body must be a JSON object: {"dateOfBirth": "YYYY-MM-DD"}')
    text = document.get("dateOfBirth")
    if not isinstance(text, str):
        raise InvalidInput('"dateOfBirth" is required and must be a string "YYYY-MM-DD"')
    return text


async def _read_body(request: web.Request) -> bytes:
    """The whole body; 503 if the server shuts down before it has all arrived, 408 if it is slower
    than BODY_TIMEOUT, 499 (the client's doing, not a server fault) if the client goes away.

    From the start of shutdown aiohttp reads nothing more from open connections, so a request still
    waiting for its body would hold the worker until the graceful timeout and then be cut off.
    """
    if request.content.is_eof():  # the usual case: a small body arrives with the head
        return await request.read()
    reading = asyncio.ensure_future(request.read())
    closing = asyncio.ensure_future(request.app[keys.STATE].closing.wait())
    seconds = request.app[keys.CONFIG].body_timeout
    try:
        await asyncio.wait((reading, closing), timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closing.cancel()
    if not reading.done():
        reading.cancel()
        if closing.done() and not closing.cancelled():
            raise ServiceUnavailable("the server is restarting and the body did not arrive in time; retry")
        raise RequestTimeout(f"the body did not arrive within {seconds:g} s of the request head")
    try:
        return reading.result()
    except ConnectionResetError:  # aiohttp's "Connection lost": the client closed mid-body
        raise ClientClosedRequest("the client closed the connection before the body arrived") from None
    except web.RequestPayloadError as exc:  # a malformed chunked body, or one cut short
        raise InvalidInput(f"the body could not be read: {exc}") from None


def _database_unavailable(exc: StoreUnavailable, outcome: str) -> ServiceUnavailable:
    # The store logs when an outage starts and ends; each refused request is in the access log.
    return ServiceUnavailable(f"the database is not answering; {outcome}, retry later", headers=_RETRY_LATER)


def _check_writable(request: web.Request) -> None:
    reason = request.app[keys.WRITE_GATE].refusal()
    if reason is not None:
        raise ServiceUnavailable(f"{reason}; nothing was written, retry later", headers=_RETRY_LATER)


async def put_hello(request: web.Request) -> web.Response:
    username = _username(request)
    _check_writable(request)
    _check_content_type(request)
    text = _date_of_birth_text(await _read_body(request))
    today = request.app[keys.CLOCK]()
    try:
        born = parse_date_of_birth(text, today)
    except InvalidDateOfBirth as exc:
        raise InvalidInput(f"dateOfBirth {exc}") from None
    disk = request.app[keys.DISK]
    disk.check()  # 507 at once while the disk is full (service/http/diskfull.py)
    try:
        await request.app[keys.STORE].upsert_birthday(username, born)
    except StoreUnavailable as exc:
        raise _database_unavailable(exc, "nothing was written") from None
    except Exception as exc:
        # A full disk (SQLite's) is the disk watch's to answer; anything else is a server fault.
        if (problem := disk.failed(exc)) is not None:
            raise problem from None
        raise
    disk.succeeded()
    # Committed locally, but a 204 also promises that Litestream follows it and that this machine
    # still holds the writer lease: ask again.
    gate = request.app[keys.WRITE_GATE]
    reason = gate.refusal()
    if reason is not None:
        raise ServiceUnavailable(
            f"{reason}. The date was written on this machine but is not confirmed: it may or may not "
            "be kept. Repeating the PUT is safe",
            headers=_RETRY_LATER,
        )
    if (replication := request.app[keys.REPLICATION]) is not None:
        try:
            await replication.confirm(gate.refusal)
        except Unconfirmed as exc:
            raise ServiceUnavailable(
                f"{exc}: the date is stored on this machine but not yet confirmed in the replica "
                "(DURABILITY=replicated). Repeating the PUT is safe",
                headers=_RETRY_LATER,
            ) from None
    return web.Response(status=204)


async def get_hello(request: web.Request) -> web.Response:
    username = _username(request)
    try:
        born = await request.app[keys.STORE].find_birthday(username)
    except StoreUnavailable as exc:
        raise _database_unavailable(exc, "nothing was read") from None
    if born is None:
        raise NotFound(f"no date of birth is stored for {username!r}; PUT one first")
    message = greeting(username, born, request.app[keys.CLOCK]())
    # json.dumps of a str takes the C encoder's fast path; of a dict it builds an encoder each call.
    # json.dumps escapes every non-ASCII character, so the text is ASCII and its UTF-8 is its bytes.
    body = ('{"message": ' + json.dumps(message) + "}").encode("ascii")
    return web.Response(body=body, headers=_JSON_UTF8)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[keys.STATE].draining:
        raise ServiceUnavailable("shutting down; not taking new work")
    gate = request.app[keys.WRITE_GATE]
    refusal = gate.refusal()
    if refusal is not None and gate.final:
        raise ServiceUnavailable(f"not taking writes: {refusal}")
    try:
        async with asyncio.timeout(_READY_TIMEOUT_SECONDS):
            await request.app[keys.STORE].check_ready()
    except Exception as exc:  # any failure to answer, whichever backend raised it, is "not ready"
        log.warning("not ready", extra={"reason": str(exc) or type(exc).__name__})
        raise ServiceUnavailable("the database is not answering or not migrated") from None
    # A full disk stays 200: reads still work, and with one Machine a failing check would take them
    # away too; hello_disk_full is what alerts. The body says that writes are refused.
    # So does a lapsed writer lease: the refusal ends by itself once a renewal gets through.
    if (reason := refusal or request.app[keys.DISK].reason()) is not None:
        return web.json_response({"status": "ready", "writes": "refused", "reason": reason})
    return web.json_response({"status": "ready"})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI_DOCUMENT)


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[keys.METRICS]
    config = request.app[keys.CONFIG]
    if config.set_aside_merged_file is not None:
        totals = MergeTotals.read(config.set_aside_merged_file)
        registry.merged.labels("deliveries").set(totals.deliveries)
        registry.merged.labels("rows_read").set(totals.rows_read)
        registry.merged.labels("rows_written").set(totals.rows_written)
    if config.lease_deadline_file is not None:
        registry.lease_remaining.set(request.app[keys.WRITE_GATE].lease_remaining())
    # Without the database the users gauge keeps its last value; the other series still answer.
    with contextlib.suppress(StoreUnavailable):
        registry.users.set(await request.app[keys.STORE].count_users())
    # Litestream's own series follow the service's: its port stays on loopback (it also serves
    # Go's pprof pages), so this is how Fly's Prometheus gets them. No answer: the service's series
    # alone, and hello_litestream_metrics_failures_total counts it.
    litestream = request.app[keys.LITESTREAM]
    return registry.exposition(await litestream.text() if litestream is not None else None)
