"""The SQLite store: the one module that holds a connection, sets PRAGMAs, migrates and speaks SQL.

The SQLite library is the one bundled with ``pysqlite3`` (3.53): releases before 3.51.3 can corrupt a
WAL database when two processes write or checkpoint it at once, which is exactly what the service and
Litestream do.
"""

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


class UserStore:
    """Dates of birth by username, on one SQLite file.

    One connection, one thread (aiosqlite's): writes are single autocommit statements, so a call
    returns only after its write is committed; reads fetch everything at once so that no statement
    stays open across an await.
    """

    def __init__(
        self,
        conn: aiosqlite.Connection,
        schema_version: int,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self._conn = conn
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
        conn = await aiosqlite.Connection(lambda: connect(path), iter_chunk_size=64)
        return cls(conn, version, observe)

    async def close(self) -> None:
        await self._conn.close()

    @contextmanager
    def _timed(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self._observe is not None:
                self._observe(operation, time.perf_counter() - started)

    async def upsert_birthday(self, username: str, born: date) -> None:
        """Insert or update; committed when this returns."""
        updated_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self._timed("upsert"):
            await self._conn.execute(
                "INSERT INTO users (username, date_of_birth, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (username) DO UPDATE SET "
                "date_of_birth = excluded.date_of_birth, updated_at = excluded.updated_at",
                (username, born.isoformat(), updated_at),
            )

    async def find_birthday(self, username: str) -> date | None:
        with self._timed("select"):
            rows = await self._conn.execute_fetchall(
                "SELECT date_of_birth FROM users WHERE username = ?", (username,)
            )
        for (text,) in rows:
            return date.fromisoformat(text)
        return None

    async def count_users(self) -> int:
        with self._timed("count"):
            rows = await self._conn.execute_fetchall("SELECT count(*) FROM users")
        return int(next(iter(rows))[0])

    async def check_ready(self) -> None:
        """Raise unless the database answers and its schema is the one this release expects."""
        with self._timed("ready"):
            rows = await self._conn.execute_fetchall("PRAGMA user_version")
        version = int(next(iter(rows))[0])
        if version != self._schema_version:
            raise NotMigrated(f"schema version {version}, expected {self._schema_version}")
