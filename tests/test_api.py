"""The API through real HTTP, on a real SQLite file and on a real PostgreSQL server: every row of the
spec's decision table, with the same answers from both backends."""

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.http import keys
from service.settings import Config
from tests.backends import Backend

Client = TestClient[web.Request, web.Application]
JSON = {"Content-Type": "application/json"}


async def put(client: Client, name: str, body: Any, headers: dict[str, str] | None = None) -> int:
    response = await client.put(f"/hello/{name}", json=body, headers=headers)
    return response.status


async def assert_problem(response: Any, status: int, detail_has: str) -> dict[str, Any]:
    assert response.status == status
    assert response.content_type == "application/problem+json"
    problem: dict[str, Any] = await response.json(content_type=None)
    assert set(problem) >= {"type", "title", "status", "detail"}
    assert problem["status"] == status
    assert detail_has in problem["detail"]
    assert "Traceback" not in problem["detail"] and "SELECT" not in problem["detail"]
    return problem


@pytest.fixture
def config(backend: Backend, database_path: Path) -> Config:
    """Every test here runs on both backends (``backend`` is parametrized in conftest.py)."""
    return backend.configure(Config(host="127.0.0.1", port=0, database_path=database_path, metrics_port=0))


async def test_put_then_get_counts_the_days(client: Client) -> None:
    response = await client.put("/hello/Alice", json={"dateOfBirth": "1990-11-25"})
    assert response.status == 204
    assert await response.read() == b""
    response = await client.get("/hello/Alice")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.json() == {"message": "Hello, Alice! Your birthday is in 3 day(s)"}


async def test_one_day_still_says_day_s(client: Client) -> None:
    assert await put(client, "Bob", {"dateOfBirth": "2000-11-23"}) == 204
    response = await client.get("/hello/Bob")
    assert await response.json() == {"message": "Hello, Bob! Your birthday is in 1 day(s)"}


async def test_birthday_today_is_happy_birthday(client: Client) -> None:
    assert await put(client, "Carol", {"dateOfBirth": "1990-11-22"}) == 204
    response = await client.get("/hello/Carol")
    assert await response.json() == {"message": "Hello, Carol! Happy birthday!"}


async def test_put_is_an_upsert(client: Client, backend: Backend) -> None:
    assert await put(client, "Dave", {"dateOfBirth": "1990-01-01"}) == 204
    assert await put(client, "Dave", {"dateOfBirth": "1991-11-30"}) == 204
    response = await client.get("/hello/Dave")
    assert await response.json() == {"message": "Hello, Dave! Your birthday is in 8 day(s)"}
    assert backend.rows() == [("Dave", "1991-11-30")]


async def test_usernames_are_case_sensitive_and_echoed(client: Client, backend: Backend) -> None:
    assert await put(client, "Alice", {"dateOfBirth": "1990-11-23"}) == 204
    assert await put(client, "alice", {"dateOfBirth": "1990-11-24"}) == 204
    first = await (await client.get("/hello/Alice")).json()
    second = await (await client.get("/hello/alice")).json()
    assert first == {"message": "Hello, Alice! Your birthday is in 1 day(s)"}
    assert second == {"message": "Hello, alice! Your birthday is in 2 day(s)"}
    assert (await client.get("/hello/ALICE")).status == 404
    assert backend.rows() == [("Alice", "1990-11-23"), ("alice", "1990-11-24")]


async def test_unknown_user_is_404(client: Client) -> None:
    await assert_problem(await client.get("/hello/Nobody"), 404, "Nobody")


async def test_longest_username_is_accepted(client: Client) -> None:
    assert await put(client, "x" * 64, {"dateOfBirth": "1990-01-01"}) == 204
    assert (await client.get("/hello/" + "x" * 64)).status == 200


@pytest.mark.parametrize(
    "name",
    ["al1ce", "al-ice", "al%20ice", "%C3%A5lice", "x" * 65, "", "al.ice", "a/b", "%00", "Pr%0Aobe", "a%2Fb"],
)
async def test_malformed_username_is_400_on_put_and_get(client: Client, name: str, backend: Backend) -> None:
    await assert_problem(await client.get(f"/hello/{name}"), 400, "ASCII letters")
    response = await client.put(f"/hello/{name}", json={"dateOfBirth": "1990-01-01"})
    await assert_problem(response, 400, "ASCII letters")
    assert backend.rows() == []


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"dateOfBirth": "2023-02-29"}, "not a real calendar date"),
        ({"dateOfBirth": "1990-13-01"}, "not a real calendar date"),
        ({"dateOfBirth": "1990-1-5"}, "YYYY-MM-DD"),
        ({"dateOfBirth": "05/01/1990"}, "YYYY-MM-DD"),
        ({"dateOfBirth": "2026-11-22"}, "not before today"),
        ({"dateOfBirth": "2030-01-01"}, "not before today"),
        ({"dateOfBirth": None}, "required"),
        ({"dateOfBirth": 19900101}, "must be a string"),
        ({"dateOfBirth": ["1990-01-01"]}, "must be a string"),
        ({}, "required"),
        ({"dateofbirth": "1990-01-01"}, "required"),
        ([{"dateOfBirth": "1990-01-01"}], "JSON object"),
        ("1990-01-01", "JSON object"),
        (42, "JSON object"),
    ],
)
async def test_bad_date_of_birth_is_400_and_changes_nothing(
    client: Client, backend: Backend, body: Any, detail: str
) -> None:
    assert await put(client, "Erin", {"dateOfBirth": "1990-06-01"}) == 204
    await assert_problem(await client.put("/hello/Erin", json=body), 400, detail)
    assert backend.rows() == [("Erin", "1990-06-01")]


async def test_unknown_fields_are_ignored(client: Client, backend: Backend) -> None:
    assert await put(client, "Fay", {"dateOfBirth": "1990-06-01", "nickname": "f"}) == 204
    assert backend.rows() == [("Fay", "1990-06-01")]


@pytest.mark.parametrize("body", [b"", b"{", b"\xff\xfe", b"nope", b'{"dateOfBirth": "1990-01-01"'])
async def test_invalid_json_is_400(client: Client, backend: Backend, body: bytes) -> None:
    response = await client.put("/hello/Gus", data=body, headers=JSON)
    await assert_problem(response, 400, "not valid JSON")
    assert backend.rows() == []


async def test_body_over_1_kib_is_413(client: Client, backend: Backend) -> None:
    body = b'{"dateOfBirth": "1990-01-01", "pad": "' + b"x" * 1024 + b'"}'
    response = await client.put("/hello/Hal", data=body, headers=JSON)
    await assert_problem(response, 413, "1 KiB")
    assert backend.rows() == []


async def test_body_of_exactly_1_kib_is_accepted(client: Client) -> None:
    prefix = b'{"dateOfBirth": "1990-01-01", "pad": "'
    body = prefix + b"x" * (1024 - len(prefix) - 2) + b'"}'
    assert len(body) == 1024
    response = await client.put("/hello/Hal", data=body, headers=JSON)
    assert response.status == 204


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
async def test_json_content_types_are_accepted(client: Client, content_type: str) -> None:
    response = await client.put(
        "/hello/Ivy", data=b'{"dateOfBirth": "1990-01-01"}', headers={"Content-Type": content_type}
    )
    assert response.status == 204


async def test_no_content_type_is_accepted(client: Client) -> None:
    # aiohttp's client adds a Content-Type to bytes bodies unless told to skip it.
    response = await client.put(
        "/hello/Ivy", data=b'{"dateOfBirth": "1990-01-01"}', skip_auto_headers=["Content-Type"]
    )
    assert response.status == 204


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/xml", "multipart/form-data"],
)
async def test_other_content_types_are_415(client: Client, backend: Backend, content_type: str) -> None:
    response = await client.put(
        "/hello/Jo", data=b'{"dateOfBirth": "1990-01-01"}', headers={"Content-Type": content_type}
    )
    await assert_problem(response, 415, "application/json")
    assert backend.rows() == []


@pytest.mark.parametrize("method", ["POST", "DELETE", "PATCH"])
async def test_other_methods_are_405_with_allow(client: Client, method: str) -> None:
    response = await client.request(method, "/hello/Kim")
    problem = await assert_problem(response, 405, method)
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "PUT"}
    assert "Allow" not in problem


async def test_put_on_operator_endpoint_is_405(client: Client) -> None:
    response = await client.put("/healthz")
    await assert_problem(response, 405, "PUT")
    assert "GET" in response.headers["Allow"]


async def test_unknown_path_is_a_problem_404(client: Client) -> None:
    await assert_problem(await client.get("/nothing/here"), 404, "/hello/<username>")


async def test_request_id_is_taken_from_fly_then_x_request_id_else_generated(client: Client) -> None:
    response = await client.get("/healthz", headers={"Fly-Request-Id": "fly-123", "X-Request-Id": "x-9"})
    assert response.headers["X-Request-Id"] == "fly-123"
    response = await client.get("/healthz", headers={"X-Request-Id": "x-9"})
    assert response.headers["X-Request-Id"] == "x-9"
    first = (await client.get("/healthz")).headers["X-Request-Id"]
    second = (await client.get("/healthz")).headers["X-Request-Id"]
    assert first != second and len(first) == 32
    problem = await (await client.get("/hello/Nobody", headers={"X-Request-Id": "abc"})).json()
    assert problem["requestId"] == "abc"


async def test_health_and_readiness(client: Client) -> None:
    response = await client.get("/healthz")
    assert (response.status, await response.json()) == (200, {"status": "ok"})
    response = await client.get("/readyz")
    assert (response.status, await response.json()) == (200, {"status": "ready"})


async def test_readiness_fails_when_the_schema_is_not_the_expected_one(
    client: Client, backend: Backend
) -> None:
    backend.set_schema_version(99)
    await assert_problem(await client.get("/readyz"), 503, "database")
    assert (await client.get("/healthz")).status == 200


async def test_server_fault_is_a_generic_500_and_logged_with_the_request_id(
    client: Client, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    # A real fault: the table is gone underneath the running service.
    backend.drop_users()
    response = await client.get("/hello/Lee", headers={"X-Request-Id": "fault-1"})
    problem = await assert_problem(response, 500, "internal error")
    detail = problem["detail"].lower()
    assert "users" not in detail and "sqlite" not in detail and "postgres" not in detail
    logged = [r for r in caplog.records if r.name == "service.errors"]
    assert logged and getattr(logged[0], "request_id", None) == "fault-1"
    assert logged[0].exc_info is not None


async def test_head_is_served_like_get(client: Client) -> None:
    assert await put(client, "Max", {"dateOfBirth": "1990-01-01"}) == 204
    response = await client.head("/hello/Max")
    assert response.status == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "detail"),
    [
        ("PUT", "/hello/Deep", b"[" * 1000, "not valid JSON"),
        ("PUT", "/hello/Deep", b"[" * 512 + b"]" * 512, "JSON"),
        ("GET", "/hello/Pr%0Aobe", None, "ASCII letters"),
        ("PUT", "/hello/Pr%0Aobe", b'{"dateOfBirth": "1990-01-01"}', "ASCII letters"),
    ],
)
async def test_bad_input_is_a_400_logged_as_one_line_and_counted(
    client: Client,
    caplog: pytest.LogCaptureFixture,
    backend: Backend,
    method: str,
    path: str,
    body: bytes | None,
    detail: str,
) -> None:
    caplog.set_level("INFO")
    response = await client.request(method, path, data=body, headers=JSON)
    await assert_problem(response, 400, detail)
    assert [r.levelname for r in caplog.records if r.name == "service.errors"] == []
    access = [r for r in caplog.records if r.name == "service.access"]
    assert [(r.method, r.route, r.status) for r in access] == [(method, "/hello/{username}", 400)]  # type: ignore[attr-defined]
    assert client.app[keys.METRICS].request_counts == {("/hello/{username}", method, 400): 1}
    assert backend.rows() == []
