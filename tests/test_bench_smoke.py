"""The benchmark's machinery without wrk: seeding, the reference app, the PostgreSQL server the bench
starts, the report, the durability scenarios' relay, the open-loop client and its rates, request
counting and prices. No timings asserted, but floors: the relay's delay, and a server's stall in the
open-loop client's latencies.

The PostgreSQL test skips and says why without Debian's ``postgresql`` package, and fails instead when
``REQUIRE_POSTGRES=1`` or ``CI=true`` (``tests/pg_server.py``).
"""

import asyncio
import contextlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient, AiohttpServer

from scripts.bench_reference import create_reference_app
from scripts.benchmark.durability import Mark, Probe, configurations, parse_metrics, total
from scripts.benchmark.objectstore import RequestLog, count_requests, operation
from scripts.benchmark.openloop import openloop_row, rates
from scripts.benchmark.paced import PacedLoad, make_requests, paced, paced_puts, percentile
from scripts.benchmark.postgres import PostgresDatabases, postgres_databases
from scripts.benchmark.pricing import S3_STANDARD, SECONDS_PER_MONTH, TIGRIS, per_month, per_second
from scripts.benchmark.relay import DelayRelay
from scripts.benchmark.report import (
    cost_table,
    durability_table,
    openloop_table,
    plot,
    steady_table,
    sustained_table,
    table,
)
from scripts.benchmark.results import DurabilityRow, Results, Row, SteadyRow, SustainedRow, Traffic
from scripts.benchmark.runner import Bench
from scripts.benchmark.scenarios import Scenario, openloop_scenarios, scenarios, sustained_scenarios
from scripts.benchmark.seed import birthday_for, seed_database, username_for
from scripts.benchmark.servers import SERVER_CPU, peak_rss_mb
from scripts.benchmark.sustained import FileWatcher
from scripts.benchmark.timeline import describe_timeline, litestream_checkpoints
from scripts.benchmark.wrk import Load, lua_script
from service.http.app import create_app
from service.settings import Config
from service.store.migrations import load_migrations, migrations_dir
from service.store.wal_index import WalIndex
from tests.conftest import TODAY
from tests.pg_server import server_binaries, skip_or_fail
from tests.support import ROOT, put_birthday, username, wait_until


def test_seeding_writes_every_user_named_as_the_load_scripts_name_them(tmp_path: Path) -> None:
    path = tmp_path / "seed" / "hello.db"
    seed_database(path, 700)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(load_migrations(migrations_dir())),)
        rows = dict(conn.execute("SELECT username, date_of_birth FROM users").fetchall())
    assert len(rows) == 700
    assert username_for(0) == "uaaaaa" and username_for(27) == "uaaabb"
    for index in (0, 1, 25, 26, 699):
        assert rows[username_for(index)] == birthday_for(index).isoformat()
    assert all(re.fullmatch(r"[A-Za-z]{1,64}", name) for name in rows)
    assert all(date.fromisoformat(born) < TODAY for born in rows.values())
    # The database is whole without its WAL: the benchmark copies the file alone.
    assert not (path.parent / "hello.db-wal").exists() or (path.parent / "hello.db-wal").stat().st_size == 0


async def test_the_service_answers_for_seeded_users(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    path = tmp_path / "hello.db"
    seed_database(path, 50)
    config = Config(host="127.0.0.1", port=0, database_path=path, metrics_port=0)
    client = await aiohttp_client(create_app(config, clock=lambda: TODAY))
    name = username_for(42)
    response = await client.get(f"/hello/{name}")
    assert response.status == 200
    assert (await response.json())["message"].startswith(f"Hello, {name}!")


async def test_the_reference_app_has_the_same_routes(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_reference_app())
    response = await client.get("/hello/anyone")
    assert response.status == 200
    assert "message" in await response.json()
    response = await client.put("/hello/anyone", json={"dateOfBirth": "1990-01-01"})
    assert response.status == 204
    assert (await client.get("/readyz")).status == 200


def test_the_load_scripts_draw_from_the_seeded_users() -> None:
    for kind in ("get", "put", "mix"):
        script = lua_script(kind, 1234)
        assert "local users = 1234" in script
        assert "function done(" in script and "non2xx" in script
        assert "request = " in script


def test_the_report_and_plot_are_made(tmp_path: Path) -> None:
    rows = [
        Row("GET, 10 users", "reference", 100.0, 1.0, 2.0, 0, 30.0, 0.2, 40.0, 1),
        Row("GET, 10 users", "service", 80.0, 1.2, 2.5, 0, 35.0, 0.3, 50.0, 1, ratio=0.8),
        Row("PUT (new and existing users)", "stack", 50.0, 2.0, 4.0, 1, 36.0, 1.0, 70.0, 1, ratio=0.5),
        Row("GET, 10 users", "postgres", 40.0, 2.0, 5.0, 0, 38.0, 0.4, 90.0, 1, ratio=0.4, db_cpu_us=61.0),
    ]
    results = Results("2 cores, test CPU", "python scripts/bench.py --quick", 2.0, 1, rows, restore_s=0.5)
    text = table(results)
    assert "| GET, 10 users | service |" in text and "80%" in text
    assert "| GET, 10 users | service on PostgreSQL | 40 |" in text and "| 90 | 61 |" in text
    assert "restore" in text
    target = tmp_path / "plot.png"
    plot(results, target)
    assert target.read_bytes().startswith(b"\x89PNG")


def test_peak_rss_is_read_from_proc() -> None:
    assert peak_rss_mb(os.getpid()) > 0


def test_the_plan_runs_each_profile_beside_the_bare_app() -> None:
    plan = scenarios(100, 1_000, 10_000, with_stack=True, sqlite=False, postgres=True)
    assert [(s.server, s.kind) for s in plan] == [
        ("reference", "get"), ("postgres", "get"), ("reference", "put"), ("postgres", "put"),
        ("reference", "mix"), ("postgres", "mix"),
    ]  # fmt: skip
    assert all(s.baseline == s.title for s in plan if s.server == "postgres")
    both = scenarios(100, 1_000, 10_000, with_stack=False, sqlite=True, postgres=True)
    assert {s.server for s in both} == {"reference", "service", "postgres"}
    assert sum(s.server == "postgres" for s in both) == 3


@pytest.fixture
def bench_postgres(tmp_path: Path) -> Iterator[tuple[PostgresDatabases, str]]:
    """The bench's own PostgreSQL server (pinned as in a run), seeded, with one fresh sample database."""
    if server_binaries() is None:
        skip_or_fail(
            "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "apt-get install postgresql"
        )
    seeded = tmp_path / "seed.db"
    seed_database(seeded, 50)
    with postgres_databases(str(SERVER_CPU)) as databases:
        databases.seed(50, seeded)
        yield databases, databases.fresh(50)
    assert not databases.server.running()


async def test_the_bench_starts_postgresql_and_the_service_answers_on_it(
    aiohttp_client: AiohttpClient, bench_postgres: tuple[PostgresDatabases, str], tmp_path: Path
) -> None:
    databases, url = bench_postgres
    assert url.startswith("postgresql://postgres@127.0.0.1:")
    assert databases.version and databases.cpu_seconds() > 0
    config = Config(
        host="127.0.0.1", port=0, database_path=tmp_path / "unused.db", metrics_port=0, database_url=url
    )
    client = await aiohttp_client(create_app(config, clock=lambda: TODAY))
    name = username_for(42)
    response = await client.get(f"/hello/{name}")
    assert response.status == 200
    assert (await response.json())["message"].startswith(f"Hello, {name}!")
    assert (await client.put("/hello/newcomer", json={"dateOfBirth": "1990-01-01"})).status == 204
    rows = databases.server.sql("SELECT count(*) FROM users", url.rsplit("/", 1)[1].split("?")[0])
    assert rows == [["51"]]


def test_the_sustained_plan_puts_each_revision_and_profile_side_by_side() -> None:
    plan = sustained_scenarios(10_000, with_stack=True, before=True)
    assert [(s.kind, s.server) for s in plan] == [
        ("put", "service-before"), ("put", "service"), ("put", "stack-before"), ("put", "stack"),
        ("mix", "service-before"), ("mix", "service"), ("mix", "stack-before"), ("mix", "stack"),
    ]  # fmt: skip
    assert [s.server for s in sustained_scenarios(10, with_stack=False)] == ["service", "service"]
    both = scenarios(100, 1_000, 10_000, with_stack=False, other_loop=True, before=True)
    put = [s.server for s in both if s.kind == "put"]
    assert put == ["reference", "service", "reference-asyncio", "service-asyncio", "service-before"]


def test_the_sustained_table_shows_the_tail_the_wal_and_memory() -> None:
    row = SustainedRow("PUT, sustained", "stack", 7000.0, 6.0, 20.0, 45.5, 60.25, 0, 14.7, 42.2, 43.0)
    results = Results("2 cores", "python scripts/bench.py", 8.0, 1, sustained=[row], sustained_s=60)
    text = sustained_table(results)
    assert "| PUT, sustained | service + Litestream | 7,000 | 6.00 | 20.00 | 45.50 | 60.25 | 0 |" in text
    assert "| 14.7 | 42.2 | 43.0 |" in text
    assert "60 s" in text


def test_the_file_watcher_keeps_the_largest_size(tmp_path: Path) -> None:
    path = tmp_path / "hello.db-wal"
    with FileWatcher(path, interval=0.005) as watcher:
        path.write_bytes(b"x" * 5000)
        with contextlib.suppress(TimeoutError):  # the assertion below says what went wrong
            wait_until(
                lambda: watcher.largest >= 5000, timeout=5, what="the watcher saw 5000 bytes", interval=0.01
            )
        path.write_bytes(b"x" * 10)
        time.sleep(0.05)  # the point: the watcher samples the smaller file (every 5 ms) and keeps the largest
    assert watcher.largest == 5000


def test_litestream_checkpoints_are_read_from_its_log(tmp_path: Path) -> None:
    log = tmp_path / "stack.log"
    log.write_text(
        '{"time":"2026-12-03T13:00:00.250000123Z","level":"DEBUG","msg":"checkpoint","system":"store",'
        '"db":"/d/hello.db","mode":"PASSIVE","result":"0,3120,3120"}\n'
        '{"time": "2026-12-03T13:00:00.300+00:00", "level": "info", "message": "request"}\n'
        '{"time":"2026-12-03T13:00:00.500Z","level":"INFO","msg":"replicating","db":"/d/hello.db"}\n'
    )
    when = datetime(2026, 12, 3, 13, 0, 0, 250_000, tzinfo=UTC).timestamp()
    assert litestream_checkpoints(log) == [("litestream-passive", when, when, 3120)]


@pytest.mark.slow
def test_the_stack_runs_with_another_litestream_yml(tmp_path: Path) -> None:
    # --litestream-config: the stack under supervise, with the given file in place of the project's.
    # 50 pages instead of 1,000: a few hundred single-row PUTs make Litestream checkpoint, which its
    # default would not do (they write about 600 frames) before its one-minute interval.
    config = tmp_path / "litestream.yml"
    text = (ROOT / "litestream.yml").read_text()
    config.write_text(
        text.replace(
            "    monitor-interval: 250ms\n",
            "    monitor-interval: 250ms\n    min-checkpoint-page-count: 50\n",
        )
    )
    assert "min-checkpoint-page-count: 50" in config.read_text()
    seeded = tmp_path / "seed.db"
    seed_database(seeded, 100)
    bench = Bench(tmp_path / "work", 1.0, 0.0, {100: seeded}, litestream_config=config)
    bench.workdir.mkdir()
    name = bench.name("stack")
    with bench.server(Scenario("PUT", "stack", "put", 100), name) as server:
        index = WalIndex(bench.database(name))
        largest = 0
        checkpointed = False
        try:
            for number in range(600):
                assert put_birthday(f"http://127.0.0.1:{server.port}", username(number, "user")) == 204
                frames = index.frames() or (0, 0)
                if frames[1] > 0 or frames[0] < largest:  # copied back, or a WAL started over
                    checkpointed = True
                    break
                largest = frames[0]
        finally:
            index.close()
    assert (bench.workdir / "stack-root" / "litestream.yml").read_text() == config.read_text()
    assert checkpointed, f"no checkpoint with min-checkpoint-page-count: 50 (WAL at {largest} frames)"


def test_the_timeline_names_the_stall_under_the_slowest_requests() -> None:
    load = Load(requests=1000, seconds=1.0, errors=0, p50_ms=5.0, p99_ms=40.0, p999_ms=45.0, max_ms=50.0)
    events = [
        ("lock", 100.000, 100.040, 0),  # the writer waited 40 ms for the write lock
        ("write", 100.040, 100.041, 30),
        ("commit", 100.041, 100.042, 0),
        ("gc", 100.500, 100.5005, 0),  # too short to be a stall
        *[("slow", 100.001 + i / 1000, 100.042, 204) for i in range(20)],
        ("slow", 100.600, 100.612, 204),  # nothing under it
    ]
    text = describe_timeline("service, 1 s of PUTs", load, events)
    assert "p99.9 45.0 ms" in text
    assert "| lock | 1 | 40.00 | 40.00 | 40.00 | 0.04 | 0 |" in text
    assert "by the stall of 5 ms or more that overlapped each most: lock 2." in text
    assert "lock" in text.split("Around the slowest request")[1]


async def test_the_relay_forwards_both_ways_and_adds_its_delay_each_way() -> None:
    received = bytearray()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.extend(data)
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    delay = 0.05
    try:
        async with DelayRelay(server.sockets[0].getsockname()[1], delay) as relay:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            chunks = [b"first", bytes(range(256)) * 1000, b"last"]
            started = time.monotonic()
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
            echoed = await reader.readexactly(sum(map(len, chunks)))
            round_trip = time.monotonic() - started
            writer.write_eof()
            assert await reader.read() == b""  # the echo server's end of stream came through
            writer.close()
            assert echoed == b"".join(chunks) == bytes(received)  # in order, both ways
            assert round_trip >= 2 * delay
            assert relay.connections == 1 and relay.bytes_up == relay.bytes_down == len(echoed)
    finally:
        server.close()
        await server.wait_closed()


async def test_the_paced_client_sends_every_put_and_counts_the_answers(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(create_reference_app())
    assert server.port is not None
    load = await paced_puts(server.port, rate=200.0, seconds=0.1)
    assert load.sent == 20 and load.statuses == {"204": 20}
    assert load.ok == 20 and load.not_ok == 0
    assert 0 < load.p50_ms <= load.p99_ms <= load.max_ms
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0 and percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0


def test_a_month_of_requests_costs_list_prices() -> None:
    assert SECONDS_PER_MONTH == 2_592_000
    assert per_month(1.0) == 2_592_000
    # One PUT a second for a month: 2,592,000 requests at $0.005 per 1,000, on either list.
    assert S3_STANDARD.monthly_usd({"PUT": 1.0}) == pytest.approx(12.96)
    assert TIGRIS.monthly_usd({"PUT": 1.0}) == pytest.approx(12.96)
    # LIST is priced as a PUT; GET is cheaper, and not the same on both; DELETE is free.
    rates = {"PUT": 10.0, "LIST": 1.0, "GET": 2.0, "DELETE": 5.0}
    assert S3_STANDARD.monthly_usd(rates) == pytest.approx(11 * 12.96 + 2 * 2.592 * 0.4)
    assert TIGRIS.monthly_usd(rates) == pytest.approx(11 * 12.96 + 2 * 2.592 * 0.5)
    assert per_second({"PUT": 30, "LIST": 3}, 20.0) == {"PUT": 1.5, "LIST": 0.15, "GET": 0.0, "DELETE": 0.0}


def test_the_store_requests_are_counted_by_price_class_under_one_prefix(tmp_path: Path) -> None:
    assert operation("PUT", "/bench/p/hello.db/0000/1-1.ltx?x-id=PutObject") == "PUT"
    assert operation("GET", "/bench?list-type=2&prefix=p/hello.db/0000/") == "LIST"
    assert operation("GET", "/bench/p/hello.db/writer-lease.json") == "GET"
    assert operation("HEAD", "/bench/p/hello.db/0000/1-1.ltx") == "GET"
    assert operation("POST", "/bench?delete") == "DELETE"
    assert operation("DELETE", "/bench/p/hello.db/0000/1-1.ltx") == "DELETE"
    log = tmp_path / "moto.log"
    at = "127.0.0.1 - - [07/Dec/2026 02:05:56]"
    lines = [
        f'{at} "PUT /bench HTTP/1.1" 200 -',
        f'{at} "\x1b[33mGET /bench/p/hello.db/writer-lease.json HTTP/1.1\x1b[0m" 404 -',
        f'{at} "PUT /bench/p/hello.db/writer-lease.json HTTP/1.1" 200 -',
        f'{at} "GET /bench?list-type=2&prefix=p%2Fhello.db%2F0000%2F HTTP/1.1" 200 -',
        f'{at} "PUT /bench/p/hello.db/0000/2-2.ltx?x-id=PutObject HTTP/1.1" 200 -',
        f'{at} "PUT /bench/other/hello.db/0000/2-2.ltx HTTP/1.1" 200 -',
        f'{at} "GET /bench?list-type=2&prefix=other/hello.db/ HTTP/1.1" 200 -',
    ]
    text = "\n".join(lines) + "\n"
    assert count_requests(text, "bench", "p") == {"GET": 1, "PUT": 2, "LIST": 1}
    log.write_text(text + f'{at} "PUT /bench/p/x')  # a line being written
    requests = RequestLog(log)
    end = requests.offset()
    assert end == len(text.encode())
    assert requests.count("p", 0, end) == {"GET": 1, "PUT": 2, "LIST": 1}
    assert requests.count("p", len(lines[0]) + 1, end)["PUT"] == 2


def test_the_durability_probe_reads_both_sets_of_series() -> None:
    before = parse_metrics(
        "# HELP hello_replication_syncs_total Syncs\n"
        "hello_replication_syncs_total 10.0\n"
        'hello_replication_acks_total{outcome="confirmed"} 100.0\n'
        'hello_replication_acks_total{outcome="timeout"} 0.0\n'
        'litestream_replica_operation_total{operation="PUT",replica_type="s3"} 50\n'
        'litestream_replica_operation_total{operation="DELETE",replica_type="s3"} 7\n'
        'litestream_sync_count{db="/d/hello.db"} 100\n'
        'litestream_sync_seconds{db="/d/hello.db"} 1.5\n'
    )
    after = parse_metrics(
        "hello_replication_syncs_total 30.0\n"
        'hello_replication_acks_total{outcome="confirmed"} 495.0\n'
        'hello_replication_acks_total{outcome="timeout"} 5.0\n'
        'litestream_replica_operation_total{operation="PUT",replica_type="s3"} 90\n'
        'litestream_replica_operation_total{operation="DELETE",replica_type="s3"} 7\n'
        'litestream_sync_count{db="/d/hello.db"} 140\n'
        'litestream_sync_seconds{db="/d/hello.db"} 1.7\n'
    )
    assert total(before, "litestream_replica_operation_total") == 57
    assert total(after, "hello_replication_acks_total", outcome="timeout") == 5
    probe = Probe.__new__(Probe)
    probe.prefix, probe.log = "p", RequestLog(Path(os.devnull))
    traffic = probe.traffic(Mark(100.0, before, 0), Mark(110.0, after, 0))
    assert traffic.seconds == 10.0 and traffic.syncs_per_s == 2.0
    assert traffic.litestream_puts_per_s == 4.0
    assert traffic.acks == {"confirmed": 395, "timeout": 5, "unavailable": 0}
    assert traffic.puts_per_sync == 20.0
    assert traffic.db_sync_ms == pytest.approx(5.0)  # 0.2 s over 40 syncs
    assert [(c.mode, c.network) for c in configurations(0.02)] == [
        ("local", "loopback"), ("replicated", "loopback"),
        ("local", "+20 ms each way"), ("replicated", "+20 ms each way"),
    ]  # fmt: skip
    assert len({c.slug for c in configurations(0.02)}) == 4


def test_the_durability_tables_show_the_503s_the_syncs_and_the_cost() -> None:
    store = {"PUT": 1.0, "LIST": 0.1, "GET": 0.0, "DELETE": 0.0}
    replicated = Traffic(
        20.0, store, 0.9, 10.0, 4.5, {"confirmed": 890, "timeout": 10, "unavailable": 0}, 3.25
    )
    local = Traffic(20.0, store, 0.9, 0.0, None, {"confirmed": 0, "timeout": 0, "unavailable": 0})
    rows = [
        DurabilityRow("local", "loopback", 3000.0, 15.0, 40.0, 60.0, 70.0, 0, 0, local),
        DurabilityRow(
            "replicated", "+20 ms each way", 450.0, 130.0, 260.0, 2001.0, 2002.5, 10, 0, replicated
        ),
    ]
    steady = [
        SteadyRow("replicated", "+20 ms each way", 50.0, 49.9, 100.0, 170.0, 180.0, 0, replicated,
                  per_month(1.1), {S3_STANDARD.name: 14.26, TIGRIS.name: 14.26}),
    ]  # fmt: skip
    results = Results("2 cores", "python scripts/bench.py --only durability", 8.0, 1)
    results.durability, results.steady, results.durability_s = rows, steady, 20.0
    text = durability_table(results)
    row = "| replicated | +20 ms each way | 450 | 130.00 | 260.00 | 2001.00 | 2002.50 | 10 | 0 |"
    assert f"{row} 0.9 | 1.1 | 10.0 | 4.5 | 3.2 |" in text
    assert "| local | loopback | 3,000 |" in text and text.count("|  |  |") == 1
    row = "| replicated | +20 ms each way | 50 | 49.9 | 100.00 | 170.00 | 180.00 | 0 |"
    assert f"{row} 10.0 | 4.5 | 1.00 | 0.10 | 0.00 | 0.00 | 0.90 | 3.2 |" in steady_table(results)
    cost = cost_table(results)
    assert "| replicated | +20 ms each way | 50 | 1.10 | 2,851,200 | 2,851,200 | 14.26 | 14.26 |" in cost
    assert "2,592,000 s" in cost and "aws.amazon.com/s3/pricing" in cost and "tigrisdata.com/pricing" in cost


class StallingServer:
    """An aiohttp app on loopback in a thread of its own, with its own event loop: GET and PUT
    /hello/{name} answer at once, but request number ``stall_at`` blocks that loop for ``stall``
    seconds, so that nothing is answered meanwhile (as a worker stuck in a checkpoint)."""

    def __init__(self, stall_at: int, stall: float) -> None:
        self.stall_at, self.stall = stall_at, stall
        self.seen = 0
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, name="stalling-server", daemon=True)

    async def answer(self, request: web.Request) -> web.Response:
        self.seen += 1
        if self.seen == self.stall_at:
            time.sleep(self.stall)  # the point: the whole server stops
        if request.method == "PUT":
            await request.read()
            return web.Response(status=204)
        return web.json_response({"message": "Hello"})

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/hello/{name}", self.answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        assert runner.addresses
        self.port = runner.addresses[0][1]
        return runner

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator["StallingServer"]:
        self.thread.start()
        runner = asyncio.run_coroutine_threadsafe(self.start(), self.loop).result(timeout=10)
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


async def test_the_open_loop_client_counts_a_stall_for_every_request_due_during_it() -> None:
    rate, stall = 100.0, 0.2
    async with StallingServer(stall_at=30, stall=stall).running() as server:
        # One connection: the requests due during the stall cannot even be sent, as with wrk's; but
        # here each counts from its due time, not from when it could be sent.
        load = await paced(server.port, rate, 1.0, kind="mix", users=50, connections=1)
    assert load.sent == 100 and load.ok == 100 and load.not_ok == 0
    assert load.max_ms >= stall * 1000
    # The requests due in the stall's first 100 ms each waited over 100 ms: ten of them, where a closed
    # loop would have counted one slow request.
    assert load.p99_ms >= 100 and load.waited >= 10
    assert load.p50_ms < stall * 1000 / 2
    assert load.achieved_rate == pytest.approx(rate, rel=0.1)
    assert load.seconds == pytest.approx(1.0, abs=0.3)


async def test_the_open_loop_client_keeps_its_schedule_when_the_server_keeps_up() -> None:
    async with StallingServer(stall_at=0, stall=0).running() as server:
        load = await paced(server.port, 400.0, 1.0, kind="get", users=50, warmup=0.25)
    assert load.sent == 400 and load.statuses == {"200": 400}
    assert load.achieved_rate == pytest.approx(400, rel=0.05)
    assert 0 < load.p50_ms <= load.p99_ms <= load.p999_ms <= load.max_ms
    assert load.waited == 0 and load.lag_max_ms >= 0


async def test_the_open_loop_client_counts_no_answer_the_server_sends_unasked() -> None:
    """As the service does, this server answers 408 and closes a connection whose first request head
    is late (HEADER_TIMEOUT); and it closes every tenth connection after an answer, with a 408 no
    request asked for. The client opens connections as requests need them (none waits unused for the
    timeout), counts no unasked answer, and sends on the others."""
    idle_timeouts = unasked = served = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal idle_timeouts, unasked, served
        timeout: float | None = 0.3
        try:
            while True:
                try:
                    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
                except TimeoutError:
                    idle_timeouts += 1
                    writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
                    return
                timeout = None  # then a keep-alive pause of any length
                served += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                if served % 10 == 0:  # right behind the answer: what a client reads with it
                    writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
                    unasked += 1
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        load = await paced(port, 200.0, 1.0, kind="get", users=10, connections=64, warmup=0.5)
    finally:
        server.close()
        await server.wait_closed()
    assert idle_timeouts == 0 and unasked >= 10
    assert load.statuses == {"200": 200} and load.written == 200
    assert load.max_ms < 300


def test_the_open_loop_requests_are_wrks() -> None:
    gets = make_requests("get", 200, 26, 8080, seed=1)
    assert all(r.startswith(b"GET /hello/uaaaa") and b"Host: 127.0.0.1:8080\r\n" in r for r in gets)
    assert {r.split(b" ")[1].decode().removeprefix("/hello/") for r in gets} <= {
        username_for(i) for i in range(26)
    }
    for request in make_requests("put", 20, 26, 8080, seed=2):
        head, body = request.split(b"\r\n\r\n")
        assert head.startswith(b"PUT /hello/") and f"Content-Length: {len(body)}".encode() in head
        born = date.fromisoformat(json.loads(body)["dateOfBirth"])
        assert 1940 <= born.year <= 2015
    puts = sum(r.startswith(b"PUT") for r in make_requests("mix", 2000, 26, 8080, seed=3))
    assert 150 <= puts <= 250
    with pytest.raises(ValueError):
        make_requests("delete", 1, 1, 8080)


def test_the_open_loop_rates_are_shares_of_the_capacity() -> None:
    assert rates(4000.0) == [1000.0, 2000.0, 3000.0]
    assert rates(2933.4) == [733.0, 1467.0, 2200.0]
    assert rates(2.0) == [1.0, 1.0, 2.0]  # at least one request a second
    assert rates(1000.0, (0.1,)) == [100.0]


def test_the_open_loop_plan_and_table() -> None:
    plan = openloop_scenarios(10_000, with_stack=True, postgres=True)
    assert [(s.kind, s.server) for s in plan] == [
        (kind, server) for kind in ("get", "put", "mix") for server in ("service", "stack", "postgres")
    ]
    assert {s.baseline for s in plan} == {None} and {s.users for s in plan} == {10_000}
    # Every open-loop scenario's capacity is measured in a full run's plan.
    full = scenarios(1_000, 10_000, 1_000_000, with_stack=True, postgres=True)
    assert {(s.title, s.server) for s in plan} <= {(s.title, s.server) for s in full}
    assert [s.server for s in openloop_scenarios(10, with_stack=False)] == ["service"] * 3

    def load(p99_ms: float, lag_p99_ms: float, waited: int = 0) -> PacedLoad:
        return PacedLoad(
            1000.0, 12.0, 12_000, {"200": 11_990, "503": 4, "error": 6}, 0.5, p99_ms, 40.0, "get", 20.0,
            send_seconds=11.999, written=12_000, lag_p99_ms=lag_p99_ms, lag_max_ms=3.0, waited=waited,
            answered_all=11_990,
        )  # fmt: skip

    assert load(8.0, 0.9).kept_schedule and load(30.0, 2.9).kept_schedule
    assert not load(8.0, 1.1).kept_schedule
    scenario = Scenario("GET, 10,000 users", "stack", "get", 10_000)
    kept = openloop_row(scenario, 0.25, 4000.0, load(8.0, 0.5), server_cpu=4.2)
    late = openloop_row(scenario, 0.5, 4000.0, load(8.0, 2.0, waited=1234))
    assert kept.achieved_rps == pytest.approx(1000.0) and kept.not_ok == 10
    assert kept.server_cpu_us == pytest.approx(4.2e6 / 11_990)  # answers, the warm-up's too
    results = Results("2 cores", "python scripts/bench.py --only openloop", 8.0, 3)
    results.openloop, results.openloop_s, results.openloop_warmup_s = [kept, late], 12.0, 2.0
    text = openloop_table(results)
    row = "| GET, 10,000 users | service + Litestream | 25% of 4,000 | 1,000 | 1,000 | 0.50 | 8.00 | 20.00 |"
    assert f"{row} 40.00 | 10 | 350 (35%) | 0.50 | 3.00 | kept |" in text
    assert "| 50% of 4,000 |" in text and "| 2.00 | 3.00 | **late**: upper bounds; 1,234 waited" in text
    assert "for 12 s after 2 s at the same rate" in text
