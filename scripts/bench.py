"""Benchmark the service against a bare aiohttp app, both under gunicorn's aiohttp worker.

One run starts each server on a real SQLite file, drives it with ``wrk`` over loopback (64
connections; the server pinned to one core, the load generator to the other), and prints per
scenario: requests/s, p50, p99, errors (socket errors and any non-2xx answer), the worker's peak
RSS and our figure as a share of the reference. It also times start-up to ``/readyz`` 200 and,
when the production stack files are present, runs the write scenarios through ``scripts/start.sh``
(Litestream replicating to a folder) and times a ``litestream restore`` of a 1,000,000-user
database from a local S3 server. The PostgreSQL profile runs GET, PUT and the mix too: the same
service with ``DATABASE_URL`` pointing at a PostgreSQL server the bench starts on 127.0.0.1 (pinned to
the server's core) and stops (``scripts/pg_cluster.py``). The table goes to standard output and
``docs/benchmarks.md`` style; the plot to ``docs/benchmarks.png``.

    python scripts/bench.py [--only all|sqlite|postgres] [--duration SECONDS] [--rounds N] [--quick]
                            [--plot PATH] [--json PATH]

Every load is bounded by ``wrk -d`` and every process started here is stopped before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pysqlite3.dbapi2 as sqlite  # noqa: E402

from scripts.pg_cluster import PostgresServer, server_binaries  # noqa: E402
from service.store.copy import copy_data  # noqa: E402
from service.store.sqlite import connect, migrate  # noqa: E402

# A timeline event as service/trace.py writes it: (kind, start, end, count).
Event = tuple[str, float, float, int]

CONNECTIONS = 64
SERVER_CPU = 0
LOAD_CPU = 1
HOST = "127.0.0.1"
# A server name ending so runs under this gunicorn worker class instead of gunicorn.conf.py's.
OTHER_LOOP = ("-asyncio", "aiohttp.GunicornWebWorker")
LABELS = {
    "reference": "bare aiohttp",
    "service": "service",
    "reference-asyncio": "bare aiohttp, asyncio loop",
    "service-asyncio": "service, asyncio loop",
    "service-before": "service, before",
    "postgres": "service on PostgreSQL",
    "stack": "service + Litestream",
    "stack-before": "service + Litestream, before",
}
# A server name ending so runs from the checkout given with --before (another revision of the service).
BEFORE = "-before"

# Seeded users are "u" plus five lowercase letters, the index in base 26: sorted by index, so the
# seeding insert appends to the primary key's B-tree; the wrk scripts compute the same names.
_NAME_LETTERS = 5
_FIRST_BIRTHDAY = date(1950, 1, 1)


def username_for(index: int) -> str:
    """The name of seeded user ``index`` (0 <= index < 26**5)."""
    letters = []
    for _ in range(_NAME_LETTERS):
        index, digit = divmod(index, 26)
        letters.append(chr(97 + digit))
    return "u" + "".join(reversed(letters))


def birthday_for(index: int) -> date:
    """A spread of past dates of birth, 1950 to 2004."""
    return _FIRST_BIRTHDAY + timedelta(days=(index * 7919) % 20000)


def seed_database(path: Path, users: int) -> None:
    """Migrate ``path`` and insert ``users`` seeded users in one transaction."""
    migrate(path)
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO users (username, date_of_birth, updated_at) VALUES (?, ?, ?)",
            (
                (username_for(i), birthday_for(i).isoformat(), "2026-01-01T00:00:00.000+00:00")
                for i in range(users)
            ),
        )
        conn.execute("COMMIT")
        # Fold the WAL into the file, so that a byte copy of the file alone is the whole database.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    flush_to_disk(path)


def copy_database(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    flush_to_disk(target)


def flush_to_disk(path: Path) -> None:
    """Write the file's dirty pages out now, so that the kernel does not do it during a measurement."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PostgresDatabases:
    """One PostgreSQL server on loopback for the whole run: a seeded template database per user count,
    and a fresh database cloned from it for every sample (as the SQLite scenarios copy their file)."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.version = server.sql("SHOW server_version")[0][0]
        self.templates: dict[int, str] = {}
        self.made = 0

    def seed(self, users: int, seeded: Path) -> None:
        """Copy the seeded SQLite file's users into a template database (``copy-data``, verified)."""
        name = f"seed_{users}"
        self.server.sql(f"CREATE DATABASE {name}")
        report = asyncio.run(copy_data(str(seeded), self.server.url(name)))
        if not report.verified or report.target.rows != users:
            raise RuntimeError(f"seeding PostgreSQL with {users} users did not verify: {report}")
        self.server.sql("CHECKPOINT")
        self.templates[users] = name

    def fresh(self, users: int) -> str:
        """The URL of a new database holding the ``users`` seeded users."""
        self.made += 1
        name = f"bench_{self.made}"
        self.server.sql(f"CREATE DATABASE {name} TEMPLATE {self.templates[users]}")
        self.server.sql("CHECKPOINT")
        return self.server.url(name)

    def cpu_seconds(self) -> float:
        """CPU time of the postmaster and every process it runs now (the pool's backends among them)."""
        root = self.server.postmaster_pid()
        total = 0.0
        for pid in [root, *_children(root)]:
            with contextlib.suppress(OSError, IndexError):
                total += cpu_seconds(pid)
        return total


@contextlib.contextmanager
def postgres_databases(cpus: str) -> Iterator[PostgresDatabases]:
    """A PostgreSQL server started on 127.0.0.1, pinned to ``cpus``; stopped and removed afterwards."""
    bin_dir = server_binaries()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb)")
    server = PostgresServer(bin_dir)
    try:
        server.init()
        server.start(cpus)
        yield PostgresDatabases(server)
    finally:
        server.remove()


# ---- wrk scripts -------------------------------------------------------------------------------

LUA = ROOT / "scripts" / "benchmark" / "lua"


def lua_script(kind: str, users: int) -> str:
    """The wrk script for ``kind`` (get, put or mix) over ``users`` seeded users: lua/common.lua with
    the user count in place of ``__USERS__``, then lua/KIND.lua."""
    common = (LUA / "common.lua").read_text().replace("__USERS__", str(max(users, 1)))
    return common + (LUA / f"{kind}.lua").read_text()


# ---- processes ---------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            found.extend(int(child) for child in text.split())
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def gunicorn_worker(root_pid: int) -> int | None:
    """The gunicorn worker below ``root_pid``: a gunicorn process whose parent is gunicorn too."""
    stack = [(root_pid, False)]
    while stack:
        pid, parent_is_gunicorn = stack.pop()
        is_gunicorn = "gunicorn" in _cmdline(pid)
        if is_gunicorn and parent_is_gunicorn:
            return pid
        stack.extend((child, is_gunicorn) for child in _children(pid))
    return None


def peak_rss_mb(pid: int) -> float:
    """VmHWM, the resident set's high-water mark, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    ready_seconds: float
    worker: int

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.worker)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running(
    name: str,
    command: Sequence[str],
    env: Mapping[str, str],
    port: int,
    log: Path,
    timeout: float = 60.0,
    cwd: Path = ROOT,
) -> Iterator[Server]:
    """Start ``command`` in ``cwd`` pinned to the server core; yield once ``/readyz`` answers 200; stop it."""
    with log.open("ab") as log_file:
        started = time.perf_counter()
        process = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CPU), *command],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    try:
        deadline = started + timeout
        while http_status(port, "/readyz") != 200:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see {log}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{name} not ready within {timeout} s; see {log}")
            time.sleep(0.005)
        ready_seconds = time.perf_counter() - started
        worker = gunicorn_worker(process.pid)
        if worker is None:
            raise RuntimeError(f"{name}: no gunicorn worker found below process {process.pid}")
        yield Server(name, process, port, ready_seconds, worker)
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM to the process started here, then its own process group if it does not go."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # Whatever it left in its group (it was started in a new session), by that group's id.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


# ---- load --------------------------------------------------------------------------------------


@dataclass
class Load:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    p999_ms: float = 0.0
    max_ms: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def run_wrk(port: int, script: Path, seconds: float) -> Load:
    command = [
        "taskset", "-c", str(LOAD_CPU),
        "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "5s",
        "-s", str(script), f"http://{HOST}:{port}/",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    for line in result.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            raw = json.loads(line.removeprefix("BENCH_JSON "))
            errors = sum(raw[key] for key in ("non2xx", "connect", "read", "write", "timeout"))
            return Load(
                requests=raw["requests"],
                seconds=raw["duration_us"] / 1e6,
                errors=errors,
                p50_ms=raw["p50_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
                p999_ms=raw["p999_us"] / 1000,
                max_ms=raw["max_us"] / 1000,
            )
    raise RuntimeError(f"wrk printed no result:\n{result.stdout}\n{result.stderr}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    title: str
    server: str  # "reference", "service", "postgres" or "stack"
    kind: str  # the wrk script: "get", "put" or "mix"
    users: int  # users seeded, and the range GETs draw from
    baseline: str | None = None  # the title of the scenario whose reference run is 100%


@dataclass
class Sample:
    load: Load
    peak_rss_mb: float
    ready_s: float
    cpu_us_per_request: float
    db_cpu_us_per_request: float = 0.0


@dataclass
class Row:
    scenario: str
    server: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    peak_rss_mb: float
    ready_s: float
    cpu_us: float
    rounds: int
    ratio: float | None = None
    ratio_of: str = ""
    db_cpu_us: float = 0.0  # the PostgreSQL server's CPU per request (SQLite's is in the worker's)


@dataclass
class Results:
    machine: str
    command: str
    duration_s: float
    rounds: int
    rows: list[Row] = field(default_factory=list)
    restore_s: float | None = None
    restore_users: int = 0
    restore_note: str = ""
    notes: list[str] = field(default_factory=list)
    sustained: list[SustainedRow] = field(default_factory=list)
    sustained_s: float = 0.0


def machine_description() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores, {model}"


class Bench:
    def __init__(
        self,
        workdir: Path,
        duration: float,
        warmup: float,
        seeded: Mapping[int, Path],
        postgres: PostgresDatabases | None = None,
        before: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.before = before
        self.duration = duration
        self.warmup = warmup
        self.seeded = seeded
        self.postgres = postgres
        self.scripts: dict[tuple[str, int], Path] = {}
        self.started = 0

    def script(self, kind: str, users: int) -> Path:
        key = (kind, users)
        if key not in self.scripts:
            path = self.workdir / f"{kind}-{users}.lua"
            path.write_text(lua_script(kind, users))
            self.scripts[key] = path
        return self.scripts[key]

    def sample(self, scenario: Scenario) -> Sample:
        """Start the scenario's server afresh (a fresh copy of its database), load it, stop it."""
        self.started += 1
        name = f"{scenario.server}-{scenario.kind}-{scenario.users}-{self.started}"
        script = self.script(scenario.kind, scenario.users)
        with self.server(scenario, name) as server:
            if self.warmup > 0:
                run_wrk(server.port, script, self.warmup)
            database = self.postgres if scenario.server == "postgres" else None
            cpu_before = cpu_seconds(server.worker)
            db_before = database.cpu_seconds() if database else 0.0
            load = run_wrk(server.port, script, self.duration)
            cpu = cpu_seconds(server.worker) - cpu_before
            db_cpu = database.cpu_seconds() - db_before if database else 0.0
            per_request = 1e6 / max(load.requests, 1)
            return Sample(
                load, server.peak_rss_mb(), server.ready_seconds, cpu * per_request, db_cpu * per_request
            )

    def sustained(self, scenario: Scenario, seconds: float) -> SustainedRow:
        """One long load on a fresh server: the whole latency tail, the WAL's size, the worker's RSS."""
        self.started += 1
        name = f"sustained-{scenario.server}-{scenario.kind}-{self.started}"
        script = self.script(scenario.kind, scenario.users)
        with self.server(scenario, name) as server:
            run_wrk(server.port, script, max(self.warmup, 2.0))
            rss_start = rss_mb(server.worker)
            with FileWatcher(self.database(name).with_name("hello.db-wal")) as wal:
                load = run_wrk(server.port, script, seconds)
            return SustainedRow(
                scenario=scenario.title,
                server=scenario.server,
                rps=load.rps,
                p50_ms=load.p50_ms,
                p99_ms=load.p99_ms,
                p999_ms=load.p999_ms,
                max_ms=load.max_ms,
                errors=load.errors,
                wal_max_mb=wal.largest / 1e6,
                rss_start_mb=rss_start,
                rss_end_mb=rss_mb(server.worker),
            )

    def database(self, name: str) -> Path:
        return self.workdir / name / "hello.db"

    def server(
        self, scenario: Scenario, name: str, extra: Mapping[str, str] | None = None
    ) -> AbstractContextManager[Server]:
        port = free_port()
        log = self.workdir / f"{name}.log"
        extra = dict(extra or {})
        cwd = ROOT
        if scenario.server.endswith(BEFORE):
            if self.before is None:
                raise RuntimeError("a scenario of the earlier revision without --before")
            cwd = self.before
            scenario = Scenario(
                scenario.title, scenario.server.removesuffix(BEFORE), scenario.kind, scenario.users
            )
        suffix, worker_class = OTHER_LOOP
        if scenario.server.endswith(suffix):
            extra["GUNICORN_CMD_ARGS"] = f"--worker-class {worker_class}"
            scenario = Scenario(
                scenario.title, scenario.server.removesuffix(suffix), scenario.kind, scenario.users
            )
        if scenario.server == "reference":
            env = self.service_env(self.workdir / "unused.db", port) | extra
            command = ["gunicorn", "-c", "gunicorn.conf.py", "scripts.bench_reference:app_factory"]
            return running(name, command, env, port, log)
        if scenario.server == "postgres":
            if self.postgres is None:
                raise RuntimeError("a PostgreSQL scenario without a PostgreSQL server")
            env = self.service_env(self.workdir / "unused.db", port)
            env["DATABASE_URL"] = self.postgres.fresh(scenario.users)
            return running(name, ["gunicorn", "-c", "gunicorn.conf.py"], env, port, log, cwd=cwd)
        database = self.database(name)
        copy_database(self.seeded[scenario.users], database)
        env = self.service_env(database, port) | dict(extra)
        if scenario.server == "service":
            return running(name, ["gunicorn", "-c", "gunicorn.conf.py"], env, port, log, cwd=cwd)
        env |= {
            "REPLICA_URL": f"file://{self.workdir / name / 'replica'}",
            "LITESTREAM_METRICS_ADDR": f"{HOST}:{free_port()}",
            "LITESTREAM_SOCKET": str(self.workdir / f"litestream-{self.started}.sock"),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        } | extra
        return running(name, ["bash", "scripts/start.sh"], env, port, log, 120, cwd=cwd)

    def service_env(self, database: Path, port: int) -> dict[str, str]:
        return {
            "HOST": HOST,
            "PORT": str(port),
            "METRICS_HOST": HOST,
            "METRICS_PORT": str(free_port()),
            "DATABASE_PATH": str(database),
            "LOG_LEVEL": "INFO",
        }


def aggregate(scenario: Scenario, samples: Sequence[Sample]) -> Row:
    """Medians over the rounds; errors added up; the highest peak RSS."""
    return Row(
        scenario=scenario.title,
        server=scenario.server,
        rps=statistics.median(s.load.rps for s in samples),
        p50_ms=statistics.median(s.load.p50_ms for s in samples),
        p99_ms=statistics.median(s.load.p99_ms for s in samples),
        errors=sum(s.load.errors for s in samples),
        peak_rss_mb=max(s.peak_rss_mb for s in samples),
        ready_s=statistics.median(s.ready_s for s in samples),
        cpu_us=statistics.median(s.cpu_us_per_request for s in samples),
        rounds=len(samples),
        db_cpu_us=statistics.median(s.db_cpu_us_per_request for s in samples),
    )


# ---- sustained load ----------------------------------------------------------------------------


@dataclass
class SustainedRow:
    """One long load: the latency tail, the WAL's largest size and the worker's memory over it."""

    scenario: str
    server: str
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: int
    wal_max_mb: float
    rss_start_mb: float
    rss_end_mb: float


def rss_mb(pid: int) -> float:
    """VmRSS, the resident set now, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class FileWatcher:
    """Samples a file's size every ``interval`` seconds in a thread; ``largest`` is the biggest seen."""

    def __init__(self, path: Path, interval: float = 0.05) -> None:
        self.path = path
        self.interval = interval
        self.largest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="file-watcher", daemon=True)

    def __enter__(self) -> FileWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.largest = max(self.largest, self.path.stat().st_size)
            if self._stop.wait(self.interval):
                return


def sustained_scenarios(users: int, with_stack: bool, before: bool = False) -> list[Scenario]:
    """PUTs, then the mix, on the production server alone and on the whole stack with Litestream;
    with ``before``, each right after the same under the earlier revision (--before)."""
    servers: tuple[str, ...] = ("service", "stack") if with_stack else ("service",)
    if before:
        servers = tuple(name for server in servers for name in (server + BEFORE, server))
    return [
        Scenario(title, server, kind, users)
        for title, kind in (("PUT, sustained", "put"), ("90% GET / 10% PUT, sustained", "mix"))
        for server in servers
    ]


def run_sustained(bench: Bench, plan: Sequence[Scenario], seconds: float) -> list[SustainedRow]:
    rows: list[SustainedRow] = []
    for scenario in plan:
        row = bench.sustained(scenario, seconds)
        say(
            f"sustained {scenario.title:<30} {scenario.server:<9} {row.rps:8.0f} req/s "
            f"p99 {row.p99_ms:7.2f} ms p99.9 {row.p999_ms:7.2f} ms max {row.max_ms:7.2f} ms "
            f"errors {row.errors} wal {row.wal_max_mb:5.1f} MB rss {row.rss_start_mb:5.1f} -> "
            f"{row.rss_end_mb:5.1f} MB"
        )
        rows.append(row)
    return rows


# ---- timeline of the stalls --------------------------------------------------------------------

# Litestream's own checkpoints, from its JSON log at DEBUG:
# {"time": ..., "level": "DEBUG", "msg": "checkpoint", ..., "mode": "PASSIVE", "result": "a,b,c"}
_LITESTREAM_CHECKPOINT = re.compile(r'^\{.*"msg":\s*"checkpoint"', re.MULTILINE)
_STALL = 0.005  # events at least this long are shown as stalls


def litestream_checkpoints(log: Path) -> list[Event]:
    """Litestream's checkpoints from its log: (kind, time, time, frames in the WAL then)."""
    from datetime import datetime

    found: list[Event] = []
    for line in log.read_text(errors="replace").splitlines():
        if not _LITESTREAM_CHECKPOINT.match(line):
            continue
        try:
            entry = json.loads(line)
            _, frames, _ = (int(part) for part in str(entry["result"]).split(","))
            when = datetime.fromisoformat(str(entry["time"])).timestamp()  # nanoseconds: truncated
        except (ValueError, KeyError):
            continue
        found.append((f"litestream-{str(entry.get('mode', '')).lower()}", when, when, frames))
    return found


def describe_timeline(title: str, load: Load, events: Sequence[Event]) -> str:
    """What the worker did: each kind's durations, what the slowest requests overlapped, the worst second."""
    by_kind: dict[str, list[Event]] = {}
    for event in events:
        by_kind.setdefault(event[0], []).append(event)
    lines = [
        f"### {title}",
        "",
        f"wrk: {load.rps:,.0f} req/s, p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms, "
        f"p99.9 {load.p999_ms:.1f} ms, max {load.max_ms:.1f} ms, {load.errors} errors.",
        "",
        "| event | count | p50 ms | p99 ms | max ms | total s | rows or frames |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in sorted(by_kind):
        spans = sorted((end - start) * 1000 for _, start, end, _ in by_kind[kind])
        # For requests the count is the status: no sum to show.
        counts = "" if kind == "slow" else f"{sum(count for *_, count in by_kind[kind]):,}"
        lines.append(
            f"| {kind} | {len(spans):,} | {percentile(spans, 50):.2f} | {percentile(spans, 99):.2f} "
            f"| {spans[-1]:.2f} | {sum(spans) / 1000:.2f} | {counts} |"
        )
    slow = sorted(by_kind.get("slow", []), key=lambda e: e[1] - e[2])[
        : max(1, len(by_kind.get("slow", [])) // 10)
    ]
    causes: dict[str, int] = {}
    stalls = [e for e in events if e[0] not in ("slow", "write") and e[2] - e[1] >= _STALL]
    for _, start, end, _ in slow:
        overlapping = [e for e in stalls if e[1] < end and e[2] > start]
        cause = (
            max(overlapping, key=lambda e: min(e[2], end) - max(e[1], start))[0] if overlapping else "none"
        )
        causes[cause] = causes.get(cause, 0) + 1
    lines += [
        "",
        f"The slowest tenth of the requests that took 10 ms or more ({len(slow):,}), by the stall of "
        f"{_STALL * 1000:.0f} ms or more that overlapped each most: "
        + ", ".join(f"{kind} {n:,}" for kind, n in sorted(causes.items(), key=lambda kv: -kv[1]))
        + ".",
    ]
    if slow:
        worst = slow[0]
        window = [
            e
            for e in events
            if e[2] >= worst[1] - 0.2
            and e[1] <= worst[2] + 0.05
            and e[0] != "slow"
            and (e[2] - e[1] >= 0.002 or e[0].startswith("litestream") or e[0] in ("backfill", "checkpoint"))
        ]
        lines += [
            "",
            f"Around the slowest request ({(worst[2] - worst[1]) * 1000:.0f} ms), ms from its start:",
            "",
        ]
        lines += ["```"]
        for kind, start, end, count in sorted(window, key=lambda e: e[1])[:40]:
            lines.append(
                f"{(start - worst[1]) * 1000:9.1f} {(end - worst[1]) * 1000:9.1f}  {kind:<20} {count}"
            )
        lines += ["```"]
    return "\n".join(lines)


def litestream_checkpoint_figures(address: str) -> tuple[float, float] | None:
    """Litestream's passive checkpoints so far: (count, seconds in all), from its metrics."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except OSError:
        return None
    finally:
        conn.close()
    figures = {"count": 0.0, "seconds": 0.0}
    for line in text.splitlines():
        match = re.match(r'litestream_checkpoint_(count|seconds)\{[^}]*mode="PASSIVE"[^}]*\} (\S+)', line)
        if match:
            figures[match.group(1)] += float(match.group(2))
    return figures["count"], figures["seconds"]


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * pct / 100))]


def run_timeline(bench: Bench, users: int, seconds: float, with_stack: bool) -> str:
    """Sustained PUTs with the worker's timeline on (TRACE_FILE), server alone and whole stack."""
    from service.trace import load as load_events

    parts = []
    for server in ("service", "stack") if with_stack else ("service",):
        scenario = Scenario("PUT, sustained, traced", server, "put", users)
        bench.started += 1
        name = f"timeline-{server}-{bench.started}"
        trace = bench.workdir / name / "trace.jsonl"
        litestream = f"{HOST}:{free_port()}"
        extra = {"TRACE_FILE": str(trace), "LOG_LEVEL": "DEBUG", "LITESTREAM_METRICS_ADDR": litestream}
        with bench.server(scenario, name, extra) as server_process:
            script = bench.script("put", users)
            run_wrk(server_process.port, script, 2.0)
            measured_from = time.time()
            before = litestream_checkpoint_figures(litestream) if server == "stack" else None
            load = run_wrk(server_process.port, script, seconds)
            after = litestream_checkpoint_figures(litestream) if server == "stack" else None
        events = load_events(trace) + litestream_checkpoints(bench.workdir / f"{name}.log")
        events = [event for event in events if event[2] >= measured_from]
        text = describe_timeline(f"{LABELS[server]}, {seconds:g} s of PUTs", load, events)
        if before is not None and after is not None and after[0] > before[0]:
            count, total = after[0] - before[0], after[1] - before[1]
            text += (
                f"\n\nLitestream's own metrics over the load: {count:.0f} passive checkpoints, "
                f"{total * 1000 / count:.1f} ms each on average (litestream_checkpoint_seconds), held "
                "under its write lock."
            )
        parts.append(text)
        say(parts[-1])
    return "\n\n".join(parts)


def stack_available() -> bool:
    return (ROOT / "scripts" / "start.sh").is_file() and (ROOT / "litestream.yml").is_file()


def scenarios(
    small: int,
    medium: int,
    large: int,
    with_stack: bool,
    sqlite: bool = True,
    postgres: bool = False,
    other_loop: bool = False,
    before: bool = False,
) -> list[Scenario]:
    """The run's plan: for each of GET, PUT and the mix, the bare app, then SQLite, then PostgreSQL;
    with ``other_loop``, the bare app and SQLite under the other worker class too."""
    get, put, mix = f"GET, {medium:,} users", "PUT (new and existing users)", "90% GET / 10% PUT"
    found: list[Scenario] = []
    suffix = OTHER_LOOP[0]
    for title, kind in ((get, "get"), (put, "put"), (mix, "mix")):
        found.append(Scenario(title, "reference", kind, medium))
        if sqlite:
            found.append(Scenario(title, "service", kind, medium, baseline=title))
        if sqlite and other_loop:
            found.append(Scenario(title, "reference" + suffix, kind, medium))
            found.append(Scenario(title, "service" + suffix, kind, medium, baseline=title))
        if sqlite and before:
            found.append(Scenario(title, "service" + BEFORE, kind, medium, baseline=title))
        if postgres:
            found.append(Scenario(title, "postgres", kind, medium, baseline=title))
    if not sqlite:
        return found
    found += [
        Scenario(f"GET, {small:,} users", "service", "get", small),
        Scenario(f"GET, {large:,} users", "service", "get", large, baseline=f"GET, {small:,} users"),
    ]
    if with_stack:
        found += [
            Scenario(put, "stack", "put", medium, baseline=put),
            Scenario(mix, "stack", "mix", medium, mix),
        ]
    return found


def run(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results(machine_description(), args.command, args.duration, args.rounds)
    small, medium, large = (100, 1_000, 10_000) if args.quick else (1_000, 10_000, 1_000_000)
    with_sqlite = args.only in ("all", "sqlite")
    with_postgres = args.only in ("all", "postgres")
    with_sustained = args.sustained > 0 and args.only in ("all", "sqlite", "sustained")
    seeded: dict[int, Path] = {}
    for users in (small, medium, large) if with_sqlite else (medium,):
        started = time.perf_counter()
        seeded[users] = workdir / "seed" / f"{users}.db"
        seed_database(seeded[users], users)
        say(f"seeded {users:,} users in {time.perf_counter() - started:.1f} s")
    with_stack = args.only != "postgres" and stack_available()
    with contextlib.ExitStack() as stack:
        database: PostgresDatabases | None = None
        if with_postgres:
            try:
                database = stack.enter_context(postgres_databases(str(SERVER_CPU)))
            except RuntimeError as exc:
                if not with_sqlite:
                    raise
                results.notes.append(f"PostgreSQL scenarios skipped: {exc}")
                with_postgres = False
        if database is not None:
            started = time.perf_counter()
            database.seed(medium, seeded[medium])
            say(
                f"seeded PostgreSQL {database.version} with {medium:,} users "
                f"in {time.perf_counter() - started:.1f} s"
            )
            results.notes.append(
                f"service on PostgreSQL: PostgreSQL {database.version} (Debian's package, default settings: "
                "fsync and synchronous_commit on) on 127.0.0.1, pinned with the service to core "
                f"{SERVER_CPU}; the service's default pool (at most 10 connections); a fresh database "
                "cloned from a seeded template for every sample. DB CPU µs/req is the PostgreSQL "
                "server's processes' CPU over the measured seconds per request."
            )
        bench = Bench(workdir, args.duration, args.warmup, seeded, database, args.before)
        if with_sqlite or with_postgres:
            plan = scenarios(
                small,
                medium,
                large,
                with_stack,
                with_sqlite,
                with_postgres,
                other_loop=args.other_loop,
                before=args.before is not None,
            )
            run_plan(args, plan, bench, results)
        if with_sustained:
            results.sustained_s = args.sustained
            plan = sustained_scenarios(medium, with_stack, before=args.before is not None)
            results.sustained = run_sustained(bench, plan, args.sustained)
    if not with_sqlite:
        return results
    return finish(workdir, results, seeded[large], large, with_stack)


def run_plan(args: argparse.Namespace, plan: Sequence[Scenario], bench: Bench, results: Results) -> None:
    """Every scenario of ``plan``, ``args.rounds`` times; the medians go to ``results.rows``."""
    samples: dict[Scenario, list[Sample]] = {scenario: [] for scenario in plan}
    # Round after round of every scenario, reference and service side by side, so that a noisy
    # neighbour on this shared machine weighs on both; the table shows medians over the rounds.
    for round_number in range(1, args.rounds + 1):
        for scenario in plan:
            sample = bench.sample(scenario)
            samples[scenario].append(sample)
            say(
                f"round {round_number} {scenario.title:<30} {scenario.server:<9} "
                f"{sample.load.rps:8.0f} req/s p99 {sample.load.p99_ms:7.2f} ms errors {sample.load.errors} "
                f"rss {sample.peak_rss_mb:5.1f} MB cpu {sample.cpu_us_per_request:6.1f} us/req"
                f" db cpu {sample.db_cpu_us_per_request:6.1f} us/req"
            )
    rows = {(scenario.title, scenario.server): aggregate(scenario, samples[scenario]) for scenario in plan}
    for scenario in plan:
        row = rows[(scenario.title, scenario.server)]
        if scenario.baseline is not None:
            reference = (
                "reference" + OTHER_LOOP[0] if scenario.server.endswith(OTHER_LOOP[0]) else "reference"
            )
            base = (
                rows.get((scenario.baseline, reference))
                or rows.get((scenario.baseline, "reference"))
                or rows[(scenario.baseline, "service")]
            )
            row.ratio = row.rps / base.rps
            row.ratio_of = f"{base.scenario}, {base.server}"
        results.rows.append(row)


def finish(workdir: Path, results: Results, seeded: Path, large: int, with_stack: bool) -> Results:
    """The restore timing (with the production stack files), or the note that says why not."""
    if with_stack:
        try:
            results.restore_s = time_restore(workdir, seeded, large)
            results.restore_users = large
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            results.restore_note = f"not measured: {exc}"
    else:
        results.notes.append("full-stack scenarios skipped: scripts/start.sh or litestream.yml missing")
        results.restore_note = "not measured: the production stack files are missing"
    return results


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- profile -----------------------------------------------------------------------------------


def profile(kind: str, duration: float, workdir: Path, top: int = 25, on_postgres: bool = False) -> str:
    """Sample the service's worker with py-spy under one scenario's load; the busiest functions.
    With ``on_postgres``, the service runs on the PostgreSQL profile (a server started as in a run)."""
    seeded = workdir / "seed" / "10000.db"
    seed_database(seeded, 10_000)
    samples_file = workdir / "profile.txt"
    with contextlib.ExitStack() as stack:
        database: PostgresDatabases | None = None
        if on_postgres:
            database = stack.enter_context(postgres_databases(str(SERVER_CPU)))
            database.seed(10_000, seeded)
        bench = Bench(workdir, duration, 1.0, {10_000: seeded}, database)
        scenario = Scenario(f"profile {kind}", "postgres" if on_postgres else "service", kind, 10_000)
        server = stack.enter_context(bench.server(scenario, f"profile-{kind}"))
        script = bench.script(kind, 10_000)
        run_wrk(server.port, script, 1.0)
        load = subprocess.Popen(
            ["taskset", "-c", str(LOAD_CPU), "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{round(duration) + 2}s",
             "-s", str(script), f"http://{HOST}:{server.port}/"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(1)
            subprocess.run(
                ["py-spy", "record", "--pid", str(server.worker), "--duration", str(round(duration)),
                 "--rate", "250", "--format", "raw", "--output", str(samples_file), "--nonblocking"],
                check=True, capture_output=True, timeout=duration + 60,
            )  # fmt: skip
        finally:
            load.wait(timeout=duration + 30)
    return summarise_profile(samples_file.read_text(), top)


def summarise_profile(collapsed: str, top: int) -> str:
    """Self and inclusive shares per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    lines = [f"{total} samples", "", "self  function"]
    for frame, count in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"{count / total:5.1%} {frame}")
    lines += ["", "incl  function (the service's own code)"]
    for frame, count in sorted(inclusive.items(), key=lambda item: -item[1]):
        if "service/" in frame:
            lines.append(f"{count / total:5.1%} {frame}")
    return "\n".join(lines)


# ---- Litestream restore from a local S3 server --------------------------------------------------


def time_restore(workdir: Path, seeded: Path, users: int) -> float:
    """Replicate ``seeded`` to a local S3 server once, then time ``litestream restore`` of it."""
    import boto3

    folder = workdir / "restore"
    database = folder / "hello.db"
    copy_database(seeded, database)
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"} | credentials
    bin_dir = Path(sys.executable).parent
    with (folder / "moto.log").open("ab") as log_file:
        moto = subprocess.Popen(
            [str(bin_dir / "moto_server"), "-H", HOST, "-p", str(port)],
            env=env,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while http_status(port, "/") is None:
            if moto.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the local S3 server did not start")
            time.sleep(0.05)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_boto_credentials())
        s3.create_bucket(Bucket="bench")
        url = f"s3://bench/hello.db?endpoint={endpoint}&region=us-east-1"
        litestream = str(bin_dir / "litestream")
        subprocess.run(
            [litestream, "replicate", "-once", str(database), url],
            env=env,
            capture_output=True,
            timeout=300,
            check=True,
        )
        restored = folder / "restored.db"
        started = time.perf_counter()
        subprocess.run(
            [litestream, "restore", "-o", str(restored), url],
            env=env,
            capture_output=True,
            timeout=300,
            check=True,
        )
        seconds = time.perf_counter() - started
        check = sqlite.connect(str(restored))
        try:
            count = check.execute("SELECT count(*) FROM users").fetchone()[0]
        finally:
            check.close()
        if count != users:
            raise RuntimeError(f"restored {count} users, expected {users}")
        return seconds
    finally:
        stop(moto)


def _boto_credentials() -> dict[str, str]:
    return {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}


# ---- report ------------------------------------------------------------------------------------


def table(results: Results) -> str:
    lines = [
        "| scenario | server | req/s | p50 ms | p99 ms | errors | peak RSS MB | CPU µs/req "
        "| DB CPU µs/req | ready s | ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results.rows:
        ratio = f"{r.ratio:.0%}" if r.ratio is not None else ""
        db_cpu = f"{r.db_cpu_us:.0f}" if r.server == "postgres" else ""
        lines.append(
            f"| {r.scenario} | {LABELS[r.server]} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.errors} | {r.peak_rss_mb:.1f} | {r.cpu_us:.0f} | {db_cpu} | {r.ready_s:.2f} | {ratio} |"
        )
    lines.append("")
    lines.append(
        f"Medians of {results.rounds} rounds of {results.duration_s:g} s each. Ratio: req/s as a share of "
        "the bare aiohttp app in the same scenario; for the largest GET, of the service's GET at the "
        "smallest scale."
    )
    if results.restore_s is not None:
        lines.append(
            f"Litestream restore of the {results.restore_users:,}-user database from a local S3 server: "
            f"{results.restore_s:.2f} s."
        )
    elif results.restore_note:
        lines.append(f"Litestream restore: {results.restore_note}.")
    return "\n".join(lines)


def sustained_table(results: Results) -> str:
    lines = [
        "| scenario | server | req/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | WAL max MB "
        "| RSS start MB | RSS end MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results.sustained:
        lines.append(
            f"| {r.scenario} | {LABELS[r.server]} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.p999_ms:.2f} | {r.max_ms:.2f} | {r.errors} | {r.wal_max_mb:.1f} | {r.rss_start_mb:.1f} "
            f"| {r.rss_end_mb:.1f} |"
        )
    lines.append("")
    lines.append(
        f"One run of {results.sustained_s:g} s each after a 2 s warm-up, {CONNECTIONS} connections. WAL max: "
        "the largest size of hello.db-wal, sampled every 50 ms. RSS: the worker's resident set after the "
        "warm-up and at the end of the load."
    )
    return "\n".join(lines)


def plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r.scenario for r in results.rows))
    colours = {
        "reference": "#9e9e9e",
        "service": "#1f77b4",
        "reference-asyncio": "#d0d0d0",
        "service-asyncio": "#17becf",
        "service-before": "#aec7e8",
        "stack-before": "#ffbb78",
        "postgres": "#2ca02c",
        "stack": "#ff7f0e",
    }
    panels: tuple[tuple[str, Callable[[Row], float]], ...] = (
        ("throughput (requests/s, higher is better)", lambda r: r.rps),
        ("p99 latency (ms)", lambda r: r.p99_ms),
        ("server CPU per request (µs)", lambda r: r.cpu_us),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 5.5))
    servers = [server for server in LABELS if any(r.server == server for r in results.rows)]
    width = 0.8 / max(len(servers), 1)
    for offset, server in enumerate(servers):
        rows = {r.scenario: r for r in results.rows if r.server == server}
        shift = (offset - (len(servers) - 1) / 2) * width
        xs = [i + shift for i, scenario in enumerate(scenarios) if scenario in rows]
        for ax, (_, value) in zip(axes, panels, strict=True):
            ys = [value(rows[scenario]) for scenario in scenarios if scenario in rows]
            ax.bar(xs, ys, width, label=LABELS[server], color=colours[server])
    for ax, (title, _) in zip(axes, panels, strict=True):
        ax.set_xticks(range(len(scenarios)))
        ax.set_xticklabels(scenarios, rotation=25, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"{CONNECTIONS} connections, wrk and server pinned to separate cores; medians of {results.rounds} "
        f"rounds of {results.duration_s:g} s; {results.machine}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of measured load per sample")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each sample")
    parser.add_argument("--rounds", type=int, default=3, help="samples of every scenario; medians are shown")
    parser.add_argument(
        "--only",
        choices=("all", "sqlite", "postgres", "sustained"),
        default="all",
        help="run only one profile's scenarios (each beside the bare app), or only the sustained writes; "
        "the default runs everything",
    )
    parser.add_argument(
        "--sustained",
        type=float,
        default=60.0,
        help="seconds of each sustained scenario (PUTs, the mix; server alone, whole stack); 0 skips them",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: small databases, one 2 s round")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "benchmarks.png")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases)")
    parser.add_argument(
        "--other-loop",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"also run the bare app and the service under {OTHER_LOOP[1]} (default: on)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="a checkout of an earlier revision (git worktree add PATH REV): its service runs beside this "
        "one in GET, PUT, the mix and the sustained scenarios, from the same run",
    )
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="instead of the benchmark: sustained PUTs with the worker's timeline on (TRACE_FILE), "
        "and what the slowest requests overlapped",
    )
    parser.add_argument(
        "--profile",
        choices=("get", "put", "mix"),
        help="instead of the benchmark: sample the service under this load with py-spy and print the profile "
        "(on the PostgreSQL profile with --only postgres)",
    )
    args = parser.parse_args(argv)
    args.command = " ".join(["python scripts/bench.py", *(sys.argv[1:] if argv is None else argv)])
    if args.quick:
        args.duration, args.warmup, args.rounds = min(args.duration, 2.0), min(args.warmup, 1.0), 1
        args.sustained = min(args.sustained, 5.0)
    if shutil.which("wrk") is None:
        say("wrk is not installed: install it with `apt-get install wrk` (Debian's package)")
        return 2
    if shutil.which("taskset") is None:
        say("taskset is not installed: install it with `apt-get install util-linux`")
        return 2
    if (os.cpu_count() or 1) < 2:
        say("needs two cores: one for the server, one for wrk")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="hello-bench-"))
    if args.timeline:
        try:
            seeded = workdir / "seed" / "10000.db"
            seed_database(seeded, 10_000)
            bench = Bench(workdir, args.duration, args.warmup, {10_000: seeded})
            print(run_timeline(bench, 10_000, args.sustained, stack_available()))
        finally:
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        return 0
    if args.profile:
        try:
            print(profile(args.profile, args.duration, workdir, on_postgres=args.only == "postgres"))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    try:
        results = run(args, workdir)
    finally:
        if args.keep:
            say(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"machine: {results.machine}\ncommand: {results.command}\n")
    if results.rows:
        print(table(results))
    for note in results.notes:
        print(f"- {note}")
    if results.sustained:
        print(f"\nSustained load\n\n{sustained_table(results)}")
    if results.rows:
        plot(results, args.plot)
        print(f"\nplot: {args.plot}")
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
