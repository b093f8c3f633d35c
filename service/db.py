"""The SQLite store: the one module that holds a connection, sets PRAGMAs, migrates and speaks SQL.

The SQLite library is the one bundled with ``pysqlite3`` (3.53): releases before 3.51.3 can corrupt a
WAL database when two processes write or checkpoint it at once, which is exactly what the service and
Litestream do.
"""

import asyncio
import contextlib
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NamedTuple

import pysqlite3.dbapi2 as sqlite

log = logging.getLogger(__name__)

SQLITE_VERSION: str = sqlite.sqlite_version
DatabaseError = sqlite.Error

_MIGRATION_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")

# Litestream needs WAL mode and takes its own read lock; a writer that waits (busy_timeout)
# rather than failing lets both share the file. NORMAL is durable against a process crash in WAL
# mode; an acknowledged write can be lost only with the machine itself (Litestream covers that).
_PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer release than this one."""


class NotMigrated(RuntimeError):
    """The database schema is not at the version this release expects."""


def migrations_dir() -> Path:
    """Where the numbered SQL files are: inside the installed package, or at the repository root."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "migrations", package.parent / "migrations"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no migrations folder beside {package}")


def load_migrations(folder: Path) -> list[tuple[int, Path]]:
    """Numbered migrations in order; the numbers must run 1, 2, 3, ... without gaps."""
    found = sorted(
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if (match := _MIGRATION_NAME.fullmatch(path.name))
    )
    for expected, (number, path) in enumerate(found, start=1):
        if number != expected:
            raise ValueError(f"migration {path.name} is out of sequence; expected number {expected}")
    return found


def connect(path: Path) -> sqlite.Connection:
    """A connection in autocommit mode (transactions are explicit) with the PRAGMAs set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite.connect(str(path), isolation_level=None, check_same_thread=False)
    for pragma in _PRAGMAS:
        conn.execute(pragma)
    return conn


def migrate(path: Path, folder: Path | None = None) -> int:
    """Apply pending migrations, each in one transaction with its ``user_version``; return it."""
    migrations = load_migrations(folder or migrations_dir())
    latest = len(migrations)
    conn = connect(path)
    try:
        current: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if current > latest:
            raise SchemaTooNew(
                f"database {path} has schema version {current}, but this release knows only up to "
                f"{latest}; run a newer release or restore an older copy"
            )
        for number, script in migrations[current:]:
            # executescript runs the whole file; BEGIN IMMEDIATE ... COMMIT around it, with the
            # version mark inside, makes the file and its mark one atomic step.
            try:
                conn.executescript(
                    f"BEGIN IMMEDIATE;\n{script.read_text()}\nPRAGMA user_version = {number};\nCOMMIT;"
                )
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            log.info("migration applied", extra={"migration": script.name, "version": number})
        return latest
    finally:
        conn.close()


_UPSERT = (
    "INSERT INTO users (username, date_of_birth, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (username) DO UPDATE SET "
    "date_of_birth = excluded.date_of_birth, updated_at = excluded.updated_at"
)
_SELECT = "SELECT date_of_birth FROM users WHERE username = ?"
_COUNT = "SELECT count(*) FROM users"
_SCHEMA_VERSION = "PRAGMA user_version"

# SQLite's "busy" and "locked" result codes: another connection holds a lock this one needs.
_BUSY_CODES = frozenset({5, 6})

# A group commit takes at most this many writes: enough to absorb any burst 64 connections make,
# small enough that one transaction stays short for Litestream's checkpoints.
_MAX_BATCH = 256

# The read connection runs in the event loop's thread, so a wait there stops every request: it waits
# this long at most, then the read is retried on the writer's thread, which may wait the full 5 s.
_READER_BUSY_TIMEOUT_MS = 20

Settled = list[tuple["asyncio.Future[Any]", Any, BaseException | None]]


def connect_reader(path: Path) -> sqlite.Connection:
    """A connection that can only read, for point lookups in the event loop's thread."""
    conn = sqlite.connect(str(path), isolation_level=None, check_same_thread=False, cached_statements=16)
    conn.execute("PRAGMA query_only = ON")
    conn.execute(f"PRAGMA busy_timeout = {_READER_BUSY_TIMEOUT_MS}")
    return conn


class _Upsert(NamedTuple):
    params: tuple[str, str, str]
    future: "asyncio.Future[None]"


class _Call(NamedTuple):
    function: Callable[[sqlite.Connection], Any]
    future: "asyncio.Future[Any]"


_STOP = object()


class _Writer:
    """One thread with the one writing connection; concurrent upserts share one commit.

    Callers queue their upsert and wait on a future. The thread takes every upsert waiting at that
    moment (a group commit), writes them in one ``BEGIN IMMEDIATE`` transaction and resolves each
    future only after ``COMMIT`` returned, so a caller still learns of success only once its own row
    is committed. If the batch fails, it is rolled back and every upsert in it is retried in a
    transaction of its own: a bad row fails only its own caller. All results of a batch go back to
    the event loop in one hop. Other calls (readiness, reads that met a lock) run on the same
    thread and connection, one at a time, in arrival order.
    """

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self._loop = loop
        self._queue: queue.SimpleQueue[_Upsert | _Call | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)
        self._opened: asyncio.Future[None] = loop.create_future()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._stopping = False

    async def start(self) -> None:
        self._thread.start()
        await self._opened

    async def stop(self) -> None:
        """Finish every queued call, then close the connection."""
        if not self._stopping:
            self._stopping = True
            self._queue.put(_STOP)
        await self._closed

    def _check_open(self) -> None:
        # Nothing queued after the stop would ever be answered.
        if self._stopping:
            raise sqlite.ProgrammingError("the store is closed")

    def upsert(self, params: tuple[str, str, str]) -> "asyncio.Future[None]":
        self._check_open()
        future: asyncio.Future[None] = self._loop.create_future()
        self._queue.put(_Upsert(params, future))
        return future

    def call(self, function: Callable[[sqlite.Connection], Any]) -> "asyncio.Future[Any]":
        self._check_open()
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put(_Call(function, future))
        return future

    def _hand_back(self, settled: Settled) -> None:
        if settled:
            self._loop.call_soon_threadsafe(_settle, settled)

    def _run(self) -> None:
        opened: Settled
        try:
            conn = connect(self.path)
        except BaseException as exc:  # handed to the caller of start()
            opened = [(self._opened, None, exc)]
            self._loop.call_soon_threadsafe(_settle, opened)
            return
        opened = [(self._opened, None, None)]
        self._loop.call_soon_threadsafe(_settle, opened)
        try:
            stopping = False
            while not stopping:
                jobs = [self._queue.get()]
                while len(jobs) < _MAX_BATCH:
                    try:
                        jobs.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                settled: Settled = []
                try:
                    stopping = self._process(conn, jobs, settled)
                except Exception as exc:
                    # A fault outside any one job: each caller not yet answered learns of it.
                    stopping = any(job is _STOP for job in jobs)
                    answered = {id(future) for future, _, _ in settled}
                    settled.extend(
                        (job.future, None, exc)
                        for job in jobs
                        if isinstance(job, _Upsert | _Call) and id(job.future) not in answered
                    )
                self._hand_back(settled)
        finally:
            conn.close()
            closed: Settled = [(self._closed, None, None)]
            self._loop.call_soon_threadsafe(_settle, closed)

    def _process(
        self, conn: sqlite.Connection, jobs: list[_Upsert | _Call | object], settled: Settled
    ) -> bool:
        """Run one batch in order of arrival; True if it held the request to stop."""
        stopping = False
        upserts: list[_Upsert] = []
        for job in jobs:
            if isinstance(job, _Upsert):
                upserts.append(job)
                continue
            # Keep the order of arrival: writes queued before a call are committed first.
            self._commit(conn, upserts, settled)
            upserts = []
            if isinstance(job, _Call):
                try:
                    settled.append((job.future, job.function(conn), None))
                except Exception as exc:
                    settled.append((job.future, None, exc))
            else:
                stopping = True
        self._commit(conn, upserts, settled)
        return stopping

    @staticmethod
    def _commit(conn: sqlite.Connection, upserts: list[_Upsert], settled: Settled) -> None:
        if not upserts:
            return
        if len(upserts) > 1:
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(_UPSERT, [upsert.params for upsert in upserts])
                conn.execute("COMMIT")
            except sqlite.Error as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite.Error):
                        conn.execute("ROLLBACK")
                log.warning(
                    "group commit failed; retrying its writes one by one",
                    extra={"writes": len(upserts), "reason": str(exc)},
                )
            else:
                settled.extend((upsert.future, None, None) for upsert in upserts)
                return
        for upsert in upserts:
            # A single autocommit statement: committed when execute() returns.
            try:
                conn.execute(_UPSERT, upsert.params)
            except sqlite.Error as exc:
                settled.append((upsert.future, None, exc))
            else:
                settled.append((upsert.future, None, None))


def _settle(settled: Settled) -> None:
    for future, result, error in settled:
        if future.done():  # the caller gave up (cancelled); the write itself stands
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _count_users(path: Path) -> int:
    conn = sqlite.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
        count: int = conn.execute(_COUNT).fetchone()[0]
        return count
    finally:
        conn.close()


class UserStore:
    """Dates of birth by username, on one SQLite file.

    Reads: a point lookup by primary key takes a few microseconds, far less than handing it to
    another thread and back (a queue, a thread wake-up, a loop wake-up and a GIL hand-over, each
    several times that), so ``find_birthday`` runs it at once in the event loop's thread on a
    connection of its own that can only read. WAL mode lets it read while the writer writes; it
    fetches the row and finishes the statement before returning, so no statement stays open across
    an await (the "database is locked" upgrade trap cannot arise on a connection that never writes).

    Writes: one thread with one connection (``_Writer``), never the loop's thread, since a commit can
    wait for Litestream's lock or run a checkpoint. Concurrent upserts share one transaction.
    """

    def __init__(
        self,
        reader: sqlite.Connection,
        writer: _Writer,
        schema_version: int,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self._reader = reader
        self._read_cursor = reader.cursor()
        self._writer = writer
        self._schema_version = schema_version
        self._observe = observe

    @classmethod
    async def open(
        cls,
        path: Path,
        observe: Callable[[str, float], None] | None = None,
        migrations: Path | None = None,
    ) -> "UserStore":
        version = await asyncio.to_thread(migrate, path, migrations)
        writer = _Writer(path, asyncio.get_running_loop())
        await writer.start()
        try:
            reader = connect_reader(path)
        except BaseException:
            await writer.stop()
            raise
        return cls(reader, writer, version, observe)

    async def close(self) -> None:
        """Finish the queued writes, then close both connections; closing again does nothing."""
        try:
            await self._writer.stop()
        finally:
            self._reader.close()

    async def upsert_birthday(self, username: str, born: date) -> None:
        """Insert or update; committed when this returns."""
        started = time.perf_counter()
        updated_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        try:
            await self._writer.upsert((username, born.isoformat(), updated_at))
        finally:
            if self._observe is not None:
                self._observe("upsert", time.perf_counter() - started)

    async def find_birthday(self, username: str) -> date | None:
        started = time.perf_counter()
        try:
            try:
                # fetchall() steps the statement to its end, which resets it: no read stays open.
                rows = self._read_cursor.execute(_SELECT, (username,)).fetchall()
            except sqlite.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) not in _BUSY_CODES:
                    raise
                rows = await self._writer.call(lambda conn: conn.execute(_SELECT, (username,)).fetchall())
        finally:
            if self._observe is not None:
                self._observe("select", time.perf_counter() - started)
        for (text,) in rows:
            return date.fromisoformat(text)
        return None

    async def count_users(self) -> int:
        # A full count reads the whole table (tens of milliseconds at a million users): on a
        # connection and thread of its own, so that neither the event loop nor the writes queued on
        # the writer's thread wait for it.
        started = time.perf_counter()
        try:
            count: int = await asyncio.to_thread(_count_users, self._writer.path)
        finally:
            if self._observe is not None:
                self._observe("count", time.perf_counter() - started)
        return count

    async def check_ready(self) -> None:
        """Raise unless the database answers and its schema is the one this release expects.

        Asked on the writer's thread, so that readiness also says that writes are being taken.
        """
        started = time.perf_counter()
        try:
            version: int = await self._writer.call(lambda conn: conn.execute(_SCHEMA_VERSION).fetchone()[0])
        finally:
            if self._observe is not None:
                self._observe("ready", time.perf_counter() - started)
        if version != self._schema_version:
            raise NotMigrated(f"schema version {version}, expected {self._schema_version}")
