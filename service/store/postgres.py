"""The PostgreSQL backend: a pool of asyncpg connections, and its own migrations under an advisory lock.

Chosen by ``DATABASE_URL=postgresql://...`` (TLS through the URL's ``sslmode``). Every operation a
request makes (waiting for a pooled connection, connecting, the statement) ends within
``DATABASE_STATEMENT_TIMEOUT``; the server is told the same limit, so that it stops the work too. A
database that is down, restarting or not answering becomes ``StoreUnavailable`` (the handlers answer
503 with Retry-After), and the pool connects again by itself when the database returns: a connection
the server closed is replaced on its next use.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from service.settings import PostgresSettings
from service.store.errors import StoreClosed, StoreUnavailable
from service.store.migrations import NotMigrated, load_migrations, migrations_dir, too_new

log = logging.getLogger(__name__)

T = TypeVar("T")

# One key for "this schema is being migrated": any bigint the other users of the database do not
# take. Session-level, so a migrator that dies lets go of it with its connection.
MIGRATION_LOCK_KEY = 0x6865_6C6C_6F5F_6462  # "hello_db"

_APPLICATION_NAME = "hello-birthday"

_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " single boolean PRIMARY KEY DEFAULT true CHECK (single),"
    " version integer NOT NULL)"
)
_READ_VERSION = "SELECT version FROM schema_version"
_WRITE_VERSION = (
    "INSERT INTO schema_version (single, version) VALUES (true, $1) "
    "ON CONFLICT (single) DO UPDATE SET version = excluded.version"
)
_UPSERT = (
    "INSERT INTO users (username, date_of_birth, updated_at) VALUES ($1, $2, $3) "
    "ON CONFLICT (username) DO UPDATE SET "
    "date_of_birth = excluded.date_of_birth, updated_at = excluded.updated_at"
)
_SELECT = "SELECT date_of_birth FROM users WHERE username = $1"
_COUNT = "SELECT count(*) FROM users"

# What "the database is not there right now" looks like: the connection refused or cut, the server
# shutting down or starting up (class 57), out of connections or disk (class 53), a connection-class
# error (08), a read-only server in the middle of a failover, or no answer in time.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)


# A pooled connection that was lost while idle: it fails at once, before anything reaches the server.
_STALE: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.InterfaceError,
)


def _server_settings(statement_timeout: float | None) -> dict[str, str]:
    settings = {"application_name": _APPLICATION_NAME, "timezone": "UTC"}
    if statement_timeout is not None:
        settings["statement_timeout"] = str(max(1, round(statement_timeout * 1000)))
    return settings


async def _keep_session(conn: Any) -> None:
    """Given back to the pool as it is: the store never changes a session's state (no SET, no LISTEN,
    no transaction left open), and a connection whose operation failed is closed instead. This saves
    the pool's default reset, a round trip to the server on every request."""


async def _connect(settings: PostgresSettings, what: str) -> Any:
    try:
        return await asyncpg.connect(
            settings.url, timeout=settings.connect_timeout, server_settings=_server_settings(None)
        )
    except UNAVAILABLE as exc:
        where = settings.safe_url
        raise StoreUnavailable(f"cannot {what}: PostgreSQL at {where} is unavailable: {exc}") from exc


async def migrate(settings: PostgresSettings, folder: Path | None = None) -> int:
    """Apply pending migrations, each in one transaction with its version mark; return the version.

    Under ``pg_advisory_lock``: processes that start together wait for the first one, then find
    nothing left to do. A database migrated by a newer release is refused (``SchemaTooNew``).
    """
    migrations = load_migrations(folder or migrations_dir("postgresql"))
    latest = len(migrations)
    conn = await _connect(settings, "migrate")
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute(_VERSION_TABLE)
            current: int = await conn.fetchval(_READ_VERSION) or 0
            if current > latest:
                raise too_new(settings.safe_url, current, latest)
            for number, script in migrations[current:]:
                async with conn.transaction():
                    await conn.execute(script.read_text())
                    await conn.execute(_WRITE_VERSION, number)
                log.info("migration applied", extra={"migration": script.name, "version": number})
            return latest
        finally:
            # Ending the session frees the lock too: a failure here must not hide the first one.
            with contextlib.suppress(*UNAVAILABLE, asyncpg.InterfaceError, asyncpg.PostgresError):
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close(timeout=settings.connect_timeout)


class PostgresStore:
    """Dates of birth by username, in PostgreSQL, through a pool of asyncpg connections.

    Each upsert is one autocommit statement: committed (and so acknowledged) when it returns.
    PostgreSQL takes concurrent writers itself, so there is no group commit here.
    """

    backend = "postgresql"

    def __init__(
        self,
        pool: Any,
        settings: PostgresSettings,
        schema_version: int,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._schema_version = schema_version
        self._observe = observe
        self._closed = False
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # An outage is logged when it starts and when it ends, not on every refused request.
        self._outage_started: float | None = None
        self._outage_refusals = 0

    @classmethod
    async def open(
        cls,
        settings: PostgresSettings,
        observe: Callable[[str, float], None] | None = None,
        migrations: Path | None = None,
    ) -> "PostgresStore":
        version = await migrate(settings, migrations)
        try:
            pool = await asyncpg.create_pool(
                settings.url,
                # Connections are made when requests need them, so nothing reconnects in the
                # background (and logs) while the database is down.
                min_size=0,
                max_size=settings.pool_size,
                timeout=settings.connect_timeout,
                command_timeout=settings.statement_timeout,
                server_settings=_server_settings(settings.statement_timeout),
                reset=_keep_session,
            )
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL at {settings.safe_url} is unavailable: {exc}") from exc
        return cls(pool, settings, version, observe)

    def describe(self) -> dict[str, str]:
        return {"backend": self.backend, "database": self._settings.safe_url}

    async def close(self) -> None:
        """Let the operations under way finish, then close the pool; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        await self._idle.wait()
        try:
            async with asyncio.timeout(self._settings.connect_timeout + self._settings.statement_timeout):
                await self._pool.close()
        except TimeoutError:
            self._pool.terminate()

    async def upsert_birthday(self, username: str, born: date) -> None:
        """Insert or update; committed when this returns."""
        now = datetime.now(UTC)
        updated_at = now.replace(microsecond=now.microsecond // 1000 * 1000)
        await self._run("upsert", lambda conn: conn.execute(_UPSERT, username, born, updated_at))

    async def find_birthday(self, username: str) -> date | None:
        found: date | None = await self._run("select", lambda conn: conn.fetchval(_SELECT, username))
        return found

    async def count_users(self) -> int:
        count: int = await self._run("count", lambda conn: conn.fetchval(_COUNT))
        return count

    async def check_ready(self) -> None:
        """Raise unless PostgreSQL answers and its schema is the one this release expects."""
        try:
            version = await self._run("ready", lambda conn: conn.fetchval(_READ_VERSION))
        except asyncpg.UndefinedTableError:
            raise NotMigrated("no schema_version table: the database was never migrated") from None
        if version != self._schema_version:
            raise NotMigrated(f"schema version {version}, expected {self._schema_version}")

    async def _run(self, operation: str, action: Callable[[Any], Awaitable[T]]) -> T:
        if self._closed:
            raise StoreClosed("the store is closed")
        self._busy += 1
        self._idle.clear()
        started = time.perf_counter()
        budget = self._settings.statement_timeout
        try:
            async with asyncio.timeout(budget):
                for attempt in (1, 2):
                    conn = await self._pool.acquire()
                    try:
                        result = await action(conn)
                    except BaseException as exc:
                        # Failed, refused or cut short by the budget: the connection may be
                        # mid-protocol and its server may not answer. Closing it is instant; a reset
                        # could wait for ever.
                        conn.terminate()
                        await self._pool.release(conn)
                        # A pooled connection the server dropped while it sat idle (a restart) fails
                        # before the statement is sent: once more on a new connection. Safe for a
                        # read and for the upsert alike, which sets the same values again.
                        if attempt == 1 and isinstance(exc, _STALE):
                            continue
                        raise
                    await self._pool.release(conn)
                    break
        except TimeoutError as exc:
            raise self._unavailable(f"PostgreSQL did not answer within {budget:g} s") from exc
        except (*UNAVAILABLE, *_STALE) as exc:
            raise self._unavailable(f"PostgreSQL is unavailable: {exc}") from exc
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()
            if self._observe is not None:
                self._observe(operation, time.perf_counter() - started)
        if self._outage_started is not None:
            log.warning(
                "PostgreSQL answers again",
                extra={
                    "seconds": round(time.monotonic() - self._outage_started, 1),
                    "refused_requests": self._outage_refusals,
                },
            )
            self._outage_started = None
        return result

    def _unavailable(self, reason: str) -> StoreUnavailable:
        if self._outage_started is None:
            self._outage_started = time.monotonic()
            self._outage_refusals = 0
            log.warning("PostgreSQL unavailable: answering 503", extra={"reason": reason})
        self._outage_refusals += 1
        return StoreUnavailable(reason)
