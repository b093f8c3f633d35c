"""The SQLite backend: the one module that holds a SQLite connection, sets PRAGMAs, migrates and
speaks SQLite's SQL.

The SQLite library is the one bundled with ``pysqlite3`` (3.53): releases before 3.51.3 can corrupt a
WAL database when two processes write or checkpoint it at once, which is exactly what the service and
Litestream do.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TypeVar

import aiosqlite
import pysqlite3.dbapi2 as sqlite

from service.store.checkpointer import Checkpointer, checkpoint_passive
from service.store.errors import StoreClosed, StoreUnavailable
from service.store.group_commit import GroupCommit
from service.store.migrations import NotMigrated, load_migrations, migrations_dir, too_new
from service.store.wal_index import WalIndex
from service.trace import TIMELINE

log = logging.getLogger(__name__)

SQLITE_VERSION: str = sqlite.sqlite_version
DatabaseError = sqlite.Error

# Litestream needs WAL mode and takes its own read lock; a writer that waits (busy_timeout)
# rather than failing lets both share the file. NORMAL is durable against a process crash in WAL
# mode; an acknowledged write can be lost only with the machine itself (Litestream covers that).
_PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
)


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
            raise too_new(str(path), current, latest)
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

# SQLITE_FULL: a write found no space left on the device (ENOSPC) or hit the size limit.
_FULL_CODE = 13


def is_disk_full(exc: BaseException) -> bool:
    """Whether a database error means "no space left": a retry cannot succeed until space returns."""
    code = getattr(exc, "sqlite_errorcode", None)
    # The primary result code is the low byte of an extended one.
    return isinstance(exc, sqlite.Error) and isinstance(code, int) and code & 0xFF == _FULL_CODE


# The read connection runs in the event loop's thread, so a wait there stops every request: it waits
# this long at most, then the read is retried on the writer's thread, which may wait the full 5 s.
_READER_BUSY_TIMEOUT_MS = 20


def connect_reader(path: Path) -> sqlite.Connection:
    """A connection that can only read, for point lookups in the event loop's thread."""
    conn = sqlite.connect(str(path), isolation_level=None, check_same_thread=False, cached_statements=16)
    conn.execute("PRAGMA query_only = ON")
    conn.execute(f"PRAGMA busy_timeout = {_READER_BUSY_TIMEOUT_MS}")
    return conn


def connect_read_only(path: Path) -> sqlite.Connection:
    """A connection that cannot change the file at all (``mode=ro``), for a database set aside."""
    return sqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)


Row = tuple[str, str, str]
T = TypeVar("T")


# The writer waits for SQLite's write lock (held by Litestream while it seals the WAL and checkpoints)
# by trying again every _LOCK_POLL seconds, for up to _LOCK_TIMEOUT in all. SQLite's own busy handler
# sleeps 1, 2, 5, 10, ... up to 100 ms between tries, so a lock held for 40 ms was taken only after 53.
_LOCK_POLL = 0.0005
_LOCK_TIMEOUT = 5.0


class _SqliteWriter:
    """How the group commit writes: on the one writing connection, in a thread of its own.

    A batch is one call on that thread (one hand-over there and back for the whole transaction):
    wait for the write lock, insert every row, commit. Checkpoints run on the checkpointer's thread
    (service/store/checkpointer.py), unless Litestream checkpoints the database (``litestream``):
    then the service runs none, since Litestream's read transaction keeps them from copying anything
    and their lock only makes Litestream's own checkpoints give up. With ``TRACE_FILE`` set it
    records each step (service/trace.py).
    """

    write_errors: tuple[type[Exception], ...] = (sqlite.Error,)

    def __init__(self, conn: sqlite.Connection, path: Path, litestream: bool) -> None:
        self._conn = conn
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._wal = WalIndex(path)
        self._checkpointer = None if litestream else Checkpointer.open(path, self._wal)

    async def call(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the writer's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, function)

    async def write_batch(self, rows: Sequence[Row]) -> None:
        await self.call(lambda: self._write(rows))

    async def write_one(self, row: Row) -> None:
        await self.call(lambda: self._write((row,)))

    def fails_every_write(self, exc: BaseException) -> bool:
        return is_disk_full(exc)

    async def close(self) -> None:
        try:
            if self._checkpointer is not None:
                await asyncio.to_thread(self._checkpointer.close)
            await self.call(self._conn.close)
        finally:
            self._thread.shutdown(wait=True)
            self._wal.close()

    def _write(self, rows: Sequence[Row]) -> None:
        conn = self._conn
        checkpointer = self._checkpointer
        if checkpointer is not None and checkpointer.restart_due():
            checkpoint_passive(conn, self._wal, "restart-checkpoint")
        started = time.time()
        self._begin()
        locked = time.time()
        try:
            conn.executemany(_UPSERT, rows)
            written = time.time()
            before = self._wal.frames() if TIMELINE.enabled else None
            conn.execute("COMMIT")
        except sqlite.Error:
            if conn.in_transaction:
                with contextlib.suppress(sqlite.Error):
                    conn.execute("ROLLBACK")
            raise
        if checkpointer is not None:
            checkpointer.after_commit()
        if TIMELINE.enabled:
            committed = time.time()
            TIMELINE.record("lock", started, locked)
            TIMELINE.record("write", locked, written, len(rows))
            TIMELINE.record("commit", written, committed)
            after = self._wal.frames()
            if before is not None and after is not None and after[1] > before[1]:
                TIMELINE.record("backfill", written, committed, after[1] - before[1])

    def _begin(self) -> None:
        self._when_free(lambda: self._conn.execute("BEGIN IMMEDIATE"))

    def schema_version(self) -> int:
        """The database's schema version, read on the writing connection."""
        return int(self._when_free(lambda: self._conn.execute(_SCHEMA_VERSION).fetchone()[0]))

    @staticmethod
    def _when_free(step: Callable[[], T]) -> T:
        """``step``, tried again every _LOCK_POLL while another connection holds a lock it needs.

        After _LOCK_TIMEOUT it gives up with StoreUnavailable (a 503 with Retry-After): nothing was
        written, and the lock's holder (Litestream, a checkpoint, an operator's shell) lets go in time.
        """
        deadline = time.monotonic() + _LOCK_TIMEOUT
        while True:
            try:
                return step()
            except sqlite.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) not in _BUSY_CODES:
                    raise
                if time.monotonic() > deadline:
                    log.warning("the database stayed locked", extra={"seconds": _LOCK_TIMEOUT})
                    raise StoreUnavailable(f"the database stayed locked for {_LOCK_TIMEOUT:g} s") from exc
            time.sleep(_LOCK_POLL)


def _connect_writer(path: Path) -> sqlite.Connection:
    conn = connect(path)
    # The writer waits for the lock itself (_SqliteWriter._begin), in steps of half a millisecond.
    conn.execute("PRAGMA busy_timeout = 0")
    # Checkpoints run on a thread of their own (service/store/checkpointer.py), not in its COMMITs.
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    return conn


async def _open_aiosqlite(connector: Callable[[], sqlite.Connection]) -> aiosqlite.Connection:
    # aiosqlite drives any DB-API connection: here pysqlite3's, with the fixed SQLite.
    return await aiosqlite.Connection(connector, iter_chunk_size=64)


def _connect_counter(path: Path) -> sqlite.Connection:
    conn = sqlite.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


class SqliteStore:
    """Dates of birth by username, on one SQLite file.

    Reads: a point lookup by primary key takes a few microseconds, far less than handing it to
    another thread and back (a queue, a thread wake-up, a loop wake-up and a GIL hand-over, each
    several times that), so ``find_birthday`` runs it at once in the event loop's thread on a
    connection of its own that can only read. WAL mode lets it read while the writer writes; it
    fetches the row and finishes the statement before returning, so no statement stays open across
    an await (the "database is locked" upgrade trap cannot arise on a connection that never writes).

    Writes: one connection on a thread of its own and never the loop's, since a commit can wait for
    Litestream's lock or run a checkpoint. Concurrent upserts share one transaction (``GroupCommit``).
    A full count, tens of milliseconds at a million users, runs on a second aiosqlite connection that
    can only read, so that queued writes never wait for it.
    """

    backend = "sqlite"

    def __init__(
        self,
        reader: sqlite.Connection,
        writer: sqlite.Connection,
        counter: aiosqlite.Connection,
        schema_version: int,
        observe: Callable[[str, float], None] | None = None,
        litestream: bool = False,
    ) -> None:
        self._reader = reader
        self._read_cursor = reader.cursor()
        self._path = Path(reader.execute("PRAGMA database_list").fetchone()[2])
        self._writer = _SqliteWriter(writer, self._path, litestream)
        self._writes: GroupCommit[Row] = GroupCommit(self._writer)
        self._counter = counter
        self._schema_version = schema_version
        self._observe = observe
        self._closed = False

    def describe(self) -> dict[str, str]:
        """For the start-up log line."""
        return {"backend": self.backend, "database": str(self._path), "sqlite_version": SQLITE_VERSION}

    @classmethod
    async def open(
        cls,
        path: Path,
        observe: Callable[[str, float], None] | None = None,
        migrations: Path | None = None,
        litestream: bool = False,
    ) -> "SqliteStore":
        """Migrate and open ``path``; ``litestream``: Litestream runs beside and checkpoints it."""
        version = await asyncio.to_thread(migrate, path, migrations)
        writer = await asyncio.to_thread(_connect_writer, path)
        try:
            counter = await _open_aiosqlite(lambda: _connect_counter(path))
            try:
                reader = connect_reader(path)
            except BaseException:
                await counter.close()
                raise
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer, counter, version, observe, litestream)

    async def close(self) -> None:
        """Finish the queued writes, then close every connection; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._writes.wait_idle()
            await self._writer.close()
            await self._counter.close()
        finally:
            self._reader.close()

    async def upsert_birthday(self, username: str, born: date) -> None:
        """Insert or update; committed when this returns."""
        if self._closed:
            raise StoreClosed("the store is closed")
        started = time.perf_counter()
        updated_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        try:
            await self._writes.upsert((username, born.isoformat(), updated_at))
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
                # Met a lock (rare in WAL mode): wait for it off the event loop's thread.
                rows = list(await self._counter.execute_fetchall(_SELECT, (username,)))
        finally:
            if self._observe is not None:
                self._observe("select", time.perf_counter() - started)
        for (text,) in rows:
            return date.fromisoformat(text)
        return None

    async def count_users(self) -> int:
        started = time.perf_counter()
        try:
            rows = await self._counter.execute_fetchall(_COUNT)
        finally:
            if self._observe is not None:
                self._observe("count", time.perf_counter() - started)
        return int(next(iter(rows))[0])

    async def check_ready(self) -> None:
        """Raise unless the database answers and its schema is the one this release expects.

        Asked on the writing connection, so that readiness also says that writes are being taken.
        """
        started = time.perf_counter()
        try:
            version = await self._writer.call(self._writer.schema_version)
        finally:
            if self._observe is not None:
                self._observe("ready", time.perf_counter() - started)
        if version != self._schema_version:
            raise NotMigrated(f"schema version {version}, expected {self._schema_version}")


# --- Re-applying the rows of a set-aside database (service/stack/lineage.py) -------------------------

SELECT_ALL_ROWS = "SELECT username, date_of_birth, updated_at FROM users ORDER BY username"
# Newest wins: a row replaces the stored one only when its updated_at is later. updated_at is ISO 8601
# UTC with milliseconds, so text order is time order.
UPSERT_IF_NEWER = _UPSERT + " WHERE excluded.updated_at > users.updated_at"


def checkpoint(path: Path) -> None:
    """Fold the -wal file into the database file and empty it; for a database nobody else has open."""
    conn = connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()
