"""``python -m service copy-data --from SOURCE --to TARGET``: move the users between the two profiles.

SOURCE and TARGET are each a SQLite file (a path, or ``sqlite:///absolute/path``) or a PostgreSQL
database (``postgresql://...``). The target is migrated first, then every row of the source is
written to it with "newest wins" (a row replaces the target's only when its ``updated_at`` is later),
in one transaction. Running it again changes nothing. Afterwards both sides are counted and
checksummed over the same canonical text of every row (``username``, ``date_of_birth``,
``updated_at`` in UTC to the millisecond): equal figures mean the target holds exactly the source's
rows; a target that also holds other or newer rows is reported, and the command exits 1.

The source must not take writes while this runs (the runbook's switch-over freezes them).
"""

import asyncio
import hashlib
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pysqlite3.dbapi2 as sqlite

from service.settings import PostgresSettings
from service.store import sqlite as sqlite_store

Row = tuple[str, str, str]  # username, YYYY-MM-DD, updated_at as 2026-12-03T08:36:06.138+00:00

_SQLITE_ROWS = "SELECT username, date_of_birth, updated_at FROM users"
_POSTGRES_ROWS = "SELECT username, date_of_birth, updated_at FROM users"
_POSTGRES_UPSERT = (
    "INSERT INTO users (username, date_of_birth, updated_at) VALUES ($1, $2, $3) "
    "ON CONFLICT (username) DO UPDATE SET date_of_birth = excluded.date_of_birth, "
    "updated_at = excluded.updated_at WHERE excluded.updated_at > users.updated_at"
)


class CopyError(RuntimeError):
    """The copy could not be made or did not verify; the message says which."""


@dataclass(frozen=True, slots=True)
class Tally:
    rows: int
    checksum: str


@dataclass(frozen=True, slots=True)
class CopyReport:
    source: Tally
    target: Tally
    written: int

    @property
    def verified(self) -> bool:
        return self.source == self.target


def tally(rows: Iterable[Row]) -> Tally:
    """A count and a SHA-256 over the rows' canonical text, in username order."""
    digest = hashlib.sha256()
    count = 0
    for username, born, updated_at in sorted(rows):
        digest.update(f"{username}\t{born}\t{updated_at}\n".encode())
        count += 1
    return Tally(count, digest.hexdigest())


def _canonical_time(value: str | datetime) -> str:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _is_postgres(where: str) -> bool:
    return where.startswith(("postgresql://", "postgres://"))


def _sqlite_path(where: str) -> Path:
    return Path(where.removeprefix("sqlite://")) if where.startswith("sqlite://") else Path(where)


# --- SQLite --------------------------------------------------------------------------------------------


def _read_sqlite(path: Path) -> list[Row]:
    if not path.is_file():
        raise CopyError(f"no SQLite database at {path}")
    conn = sqlite.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [(name, born, _canonical_time(at)) for name, born, at in conn.execute(_SQLITE_ROWS)]
    except (sqlite.Error, sqlite3.Error) as exc:
        raise CopyError(f"cannot read {path}: {exc}") from exc
    finally:
        conn.close()


def _write_sqlite(path: Path, rows: list[Row]) -> int:
    sqlite_store.migrate(path)
    conn = sqlite_store.connect(path)
    try:
        before = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(sqlite_store.UPSERT_IF_NEWER, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        written: int = conn.total_changes - before
        return written
    finally:
        conn.close()


# --- PostgreSQL ------------------------------------------------------------------------------------------


async def _read_postgres(settings: PostgresSettings) -> list[Row]:
    import asyncpg

    conn = await asyncpg.connect(settings.url, timeout=settings.connect_timeout)
    try:
        records = await conn.fetch(_POSTGRES_ROWS)
    finally:
        await conn.close()
    return [
        (r["username"], r["date_of_birth"].isoformat(), _canonical_time(r["updated_at"])) for r in records
    ]


async def _write_postgres(settings: PostgresSettings, rows: list[Row]) -> int:
    import asyncpg

    from service.store import postgres

    await postgres.migrate(settings)
    conn = await asyncpg.connect(settings.url, timeout=settings.connect_timeout)
    try:
        written = 0
        async with conn.transaction():
            for username, born, updated_at in rows:
                status: str = await conn.execute(
                    _POSTGRES_UPSERT, username, date.fromisoformat(born), datetime.fromisoformat(updated_at)
                )
                written += int(status.rsplit(" ", 1)[-1])
        return written
    finally:
        await conn.close()


# --- Both --------------------------------------------------------------------------------------------------


async def _read(where: str) -> list[Row]:
    if _is_postgres(where):
        return await _read_postgres(PostgresSettings(url=where, connect_timeout=10.0))
    return await asyncio.to_thread(_read_sqlite, _sqlite_path(where))


async def _write(where: str, rows: list[Row]) -> int:
    if _is_postgres(where):
        return await _write_postgres(PostgresSettings(url=where, connect_timeout=10.0), rows)
    return await asyncio.to_thread(_write_sqlite, _sqlite_path(where), rows)


async def copy_data(source: str, target: str) -> CopyReport:
    """Copy every row of ``source`` into ``target`` (newest wins), then count and checksum both."""
    if source == target:
        raise CopyError("--from and --to name the same database")
    try:
        rows = await _read(source)
        written = await _write(target, rows)
        return CopyReport(source=tally(rows), target=tally(await _read(target)), written=written)
    except CopyError:
        raise
    except Exception as exc:  # a connection refused, a bad URL, a failed migration: say which side
        raise CopyError(f"{type(exc).__name__}: {exc}") from exc
