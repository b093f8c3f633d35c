"""Prometheus metrics on their own port, over real HTTP."""

import os
import re

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient

from service.http import keys
from service.store.sqlite import SQLITE_VERSION

Client = TestClient[web.Request, web.Application]


async def scrape(client: Client) -> str:
    port = client.app[keys.STATE].metrics_port
    async with ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        return await response.text()


async def test_metrics_are_not_on_the_public_port(client: Client) -> None:
    assert (await client.get("/metrics")).status == 404


async def test_build_info_names_a_fixed_sqlite(client: Client) -> None:
    text = await scrape(client)
    match = re.search(r'hello_build_info\{[^}]*sqlite_version="([0-9.]+)"[^}]*\} 1\.0', text)
    assert match is not None, text
    assert match.group(1) == SQLITE_VERSION
    assert tuple(int(p) for p in match.group(1).split(".")) >= (3, 51, 3)
    assert 'version="1.0.0"' in text


async def test_requests_database_latency_and_users_are_counted(client: Client) -> None:
    for name in ("Amy", "Ben", "Cy"):
        assert (await client.put(f"/hello/{name}", json={"dateOfBirth": "1990-01-01"})).status == 204
    assert (await client.get("/hello/Amy")).status == 200
    assert (await client.get("/hello/Nobody")).status == 404
    assert (await client.get("/hello/b4d")).status == 400
    text = await scrape(client)
    assert 'hello_http_requests_total{method="PUT",route="/hello/{username}",status="204"} 3.0' in text
    assert 'hello_http_requests_total{method="GET",route="/hello/{username}",status="404"} 1.0' in text
    assert 'hello_http_request_duration_seconds_count{route="/hello/{username}",status="200"} 1.0' in text
    assert 'hello_db_query_duration_seconds_count{operation="upsert"} 3.0' in text
    assert "hello_users_stored 3.0" in text
    # The raw path never becomes a label: label values stay few.
    assert "/hello/Amy" not in text


async def test_process_start_time_is_this_process(client: Client) -> None:
    """hello_process_start_time_seconds (the restart alert's input) is this process's start, from /proc."""
    text = await scrape(client)
    match = re.search(r"^hello_process_start_time_seconds ([0-9.e+]+)$", text, re.MULTILINE)
    assert match is not None, text
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/self/stat") as stat:
        started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as proc_stat:
        boot = next(int(line.split()[1]) for line in proc_stat if line.startswith("btime "))
    assert float(match.group(1)) == pytest.approx(boot + started_ticks / ticks, abs=0.02)
    assert re.search(r"^hello_process_resident_memory_bytes [1-9]", text, re.MULTILINE), text
