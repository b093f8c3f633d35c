"""The SQLite store: the one module that holds a connection, sets PRAGMAs, migrates and speaks SQL.

The SQLite library is the one bundled with ``pysqlite3`` (3.53): releases before 3.51.3 can corrupt a
WAL database when two processes write or checkpoint it at once, which is exactly what the service and
Litestream do.
"""

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import aiosqlite
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

# SQLITE_FULL: a write found no space left on the device (ENOSPC) or hit the size limit.
_FULL_CODE = 13


def is_disk_full(exc: BaseException) -> bool:
    """Whether a database error means "no space left": a retry cannot succeed until space returns."""
    code = getattr(exc, "sqlite_errorcode", None)
    # The primary result code is the low byte of an extended one.
    return isinstance(exc, sqlite.Error) and isinstance(code, int) and code & 0xFF == _FULL_CODE


# A group commit takes at most this many writes: enough to absorb any burst 64 connections make,
# small enough that one transaction stays short for Litestream's checkpoints.
_MAX_BATCH = 256

# The read connection runs in the event loop's thread, so a wait there stops every request: it waits
# this long at most, then the read is retried on the writer's thread, which may wait the full 5 s.
_READER_BUSY_TIMEOUT_MS = 20

Pending = list[tuple[tuple[str, str, str], "asyncio.Future[None]"]]


def connect_reader(path: Path) -> sqlite.Connection:
    """A connection that can only read, for point lookups in the event loop's thread."""
    conn = sqlite.connect(str(path), isolation_level=None, check_same_thread=False, cached_statements=16)
    conn.execute("PRAGMA query_only = ON")
    conn.execute(f"PRAGMA busy_timeout = {_READER_BUSY_TIMEOUT_MS}")
    return conn


class _GroupCommit:
    """Concurrent upserts share one transaction on the one writing (aiosqlite) connection.

    While one batch is being committed, the upserts that arrive wait in ``_pending``; the next batch
    takes them all (up to ``_MAX_BATCH``) into one ``BEGIN IMMEDIATE ... COMMIT``. Each caller's
    future resolves only after the COMMIT of its own batch returned, so a 204 still means committed.
    A batch that fails is rolled back and its writes retried one by one: a bad row fails only its
    own caller. A full disk fails every write of the batch at once instead: each retry would meet
    the same full disk, and a full batch of them only delays every caller's answer. A fault outside
    any one write (the connection closed under it) fails the whole batch's callers rather than
    leaving them waiting.
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._pending: Pending = []
        self._flushing: asyncio.Task[None] | None = None

    def upsert(self, params: tuple[str, str, str]) -> "asyncio.Future[None]":
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((params, future))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())
        return future

    async def wait_idle(self) -> None:
        """Return once every write queued so far is committed or has failed."""
        while self._flushing is not None:
            await asyncio.shield(self._flushing)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:_MAX_BATCH]
                del self._pending[:_MAX_BATCH]
                try:
                    await self._commit(batch)
                except Exception as exc:
                    for _, future in batch:
                        _settle(future, exc)
        finally:
            self._flushing = None

    async def _commit(self, batch: Pending) -> None:
        if len(batch) > 1:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
                await self._conn.executemany(_UPSERT, [params for params, _ in batch])
                await self._conn.execute("COMMIT")
            except sqlite.Error as exc:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite.Error):
                        await self._conn.execute("ROLLBACK")
                if is_disk_full(exc):
                    _settle_all(batch, exc)
                    return
                log.warning(
                    "group commit failed; retrying its writes one by one",
                    extra={"writes": len(batch), "reason": str(exc)},
                )
            else:
                for _, future in batch:
                    _settle(future, None)
                return
        for index, (params, future) in enumerate(batch):
            # A single autocommit statement: committed when execute() returns.
            try:
                await self._conn.execute(_UPSERT, params)
            except sqlite.Error as exc:
                if is_disk_full(exc):
                    _settle_all(batch[index:], exc)
                    return
                _settle(future, exc)
            else:
                _settle(future, None)


def _settle(future: "asyncio.Future[None]", error: BaseException | None) -> None:
    if future.done():  # the caller gave up (cancelled); the write itself stands
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(None)


def _settle_all(batch: Pending, error: BaseException) -> None:
    for _, future in batch:
        _settle(future, error)


async def _open_aiosqlite(connector: Callable[[], sqlite.Connection]) -> aiosqlite.Connection:
    # aiosqlite drives any DB-API connection: here pysqlite3's, with the fixed SQLite.
    return await aiosqlite.Connection(connector, iter_chunk_size=64)


def _connect_counter(path: Path) -> sqlite.Connection:
    conn = sqlite.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


class UserStore:
    """Dates of birth by username, on one SQLite file.

    Reads: a point lookup by primary key takes a few microseconds, far less than handing it to
    another thread and back (a queue, a thread wake-up, a loop wake-up and a GIL hand-over, each
    several times that), so ``find_birthday`` runs it at once in the event loop's thread on a
    connection of its own that can only read. WAL mode lets it read while the writer writes; it
    fetches the row and finishes the statement before returning, so no statement stays open across
    an await (the "database is locked" upgrade trap cannot arise on a connection that never writes).

    Writes: one aiosqlite connection, so on a thread of its own and never the loop's, since a commit
    can wait for Litestream's lock or run a checkpoint. Concurrent upserts share one transaction
    (``_GroupCommit``). A full count, tens of milliseconds at a million users, runs on a second
    aiosqlite connection that can only read, so that queued writes never wait for it.
    """

    def __init__(
        self,
        reader: sqlite.Connection,
        writer: aiosqlite.Connection,
        counter: aiosqlite.Connection,
        schema_version: int,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self._reader = reader
        self._read_cursor = reader.cursor()
        self._writer = writer
        self._writes = _GroupCommit(writer)
        self._counter = counter
        self._schema_version = schema_version
        self._observe = observe
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: Path,
        observe: Callable[[str, float], None] | None = None,
        migrations: Path | None = None,
    ) -> "UserStore":
        version = await asyncio.to_thread(migrate, path, migrations)
        writer = await _open_aiosqlite(lambda: connect(path))
        try:
            counter = await _open_aiosqlite(lambda: _connect_counter(path))
            try:
                reader = connect_reader(path)
            except BaseException:
                await counter.close()
                raise
        except BaseException:
            await writer.close()
            raise
        return cls(reader, writer, counter, version, observe)

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
            raise sqlite.ProgrammingError("the store is closed")
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
            rows = await self._writer.execute_fetchall(_SCHEMA_VERSION)
        finally:
            if self._observe is not None:
                self._observe("ready", time.perf_counter() - started)
        version = int(next(iter(rows))[0])
        if version != self._schema_version:
            raise NotMigrated(f"schema version {version}, expected {self._schema_version}")


# --- Re-applying the rows of a set-aside database (service/lineage.py) ---------------------------------

_SELECT_ALL = "SELECT username, date_of_birth, updated_at FROM users ORDER BY username"
# Newest wins: a row replaces the stored one only when its updated_at is later. updated_at is ISO 8601
# UTC with milliseconds, so text order is time order.
_UPSERT_IF_NEWER = _UPSERT + " WHERE excluded.updated_at > users.updated_at"
_REAPPLY_CHUNK = 10_000


def reapply_newer_rows(path: Path, source: Path) -> tuple[int, int]:
    """Copy into ``path`` each row of ``source`` that is newer than ``path``'s row for the same user.

    One transaction on a normal writing connection, so that Litestream, following ``path``,
    replicates the result like any other write. ``source`` is opened read-only and left as it is.
    Returns (rows read from ``source``, rows written to ``path``).
    """
    old = sqlite.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    conn = connect(path)
    try:
        read = 0
        before = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = old.execute(_SELECT_ALL)
            while rows := cursor.fetchmany(_REAPPLY_CHUNK):
                read += len(rows)
                conn.executemany(_UPSERT_IF_NEWER, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return read, conn.total_changes - before
    finally:
        conn.close()
        old.close()


def checkpoint(path: Path) -> None:
    """Fold the -wal file into the database file and empty it; for a database nobody else has open."""
    conn = connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()
