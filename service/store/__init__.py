"""The store the handlers talk to: a small protocol, and the backend the configuration chooses.

SQLite (``service/store/sqlite.py``) is the default: one file on local disk, replicated by Litestream.
PostgreSQL (``service/store/postgres.py``) is chosen by ``DATABASE_URL=postgresql://...``, for
deployments with more than one machine. Both give the same answers; the contract tests run on both.
"""

from collections.abc import Callable
from datetime import date
from typing import Protocol

from service.settings import Config
from service.store.errors import StoreClosed, StoreUnavailable
from service.store.migrations import NotMigrated, SchemaTooNew

__all__ = ["NotMigrated", "SchemaTooNew", "Store", "StoreClosed", "StoreUnavailable", "open_store"]

Observe = Callable[[str, float], None]


class Store(Protocol):
    """Dates of birth by username."""

    @property
    def backend(self) -> str:
        """ "sqlite" or "postgresql"."""
        ...

    async def upsert_birthday(self, username: str, born: date) -> None:
        """Insert or update, ``updated_at`` set by the service; committed when this returns."""
        ...

    async def find_birthday(self, username: str) -> date | None: ...

    async def count_users(self) -> int: ...

    async def check_ready(self) -> None:
        """Raise unless the database answers and its schema is the one this release expects."""
        ...

    async def close(self) -> None:
        """Finish the writes under way, then let go of the database; closing again does nothing."""
        ...

    def describe(self) -> dict[str, str]:
        """What the start-up log says about the store (never a password)."""
        ...


async def open_store(config: Config, observe: Observe | None = None) -> Store:
    """Migrate, then open the configured backend."""
    if config.database_url:
        from service.store.postgres import PostgresStore  # asyncpg only where it is used

        return await PostgresStore.open(config.postgres, observe=observe)
    from service.store.sqlite import SqliteStore

    # Beside Litestream (the supervisor hands its pid over), Litestream alone checkpoints the database.
    litestream = config.litestream_pid is not None
    return await SqliteStore.open(config.database_path, observe=observe, litestream=litestream)


async def migrate_store(config: Config) -> tuple[str, int]:
    """Apply the configured backend's migrations; return where and the schema version reached."""
    if config.database_url:
        from service.store import postgres

        return config.postgres.safe_url, await postgres.migrate(config.postgres)
    import asyncio

    from service.store import sqlite

    return str(config.database_path), await asyncio.to_thread(sqlite.migrate, config.database_path)
