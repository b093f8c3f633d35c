"""The two store backends as the contract tests see them: how to point the service at one, and how
to look at what it holds with a client of the test's own (never through the store under test)."""

import dataclasses
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import asyncpg
import pysqlite3.dbapi2 as bundled_sqlite

from service.settings import Config
from service.store import Store, open_store
from service.store import postgres as pg_store
from service.store import sqlite as sqlite_store
from service.store.migrations import load_migrations, migrations_dir
from tests.pg_server import PostgresServer


class Backend(Protocol):
    name: str
    # What a write the schema refuses (a CHECK constraint) raises, from the backend's driver.
    integrity_error: type[Exception]

    def configure(self, config: Config) -> Config:
        """``config`` pointed at this backend's database."""
        ...

    def rows(self) -> list[tuple[str, str]]:
        """(username, YYYY-MM-DD) of every stored user, by username byte order."""
        ...

    def updated_at(self, username: str) -> datetime: ...

    def schema_version(self) -> int: ...

    def set_schema_version(self, version: int) -> None: ...

    def drop_users(self) -> None: ...

    async def migrate(self) -> int: ...


@dataclasses.dataclass
class SqliteBackend:
    path: Path
    name: str = "sqlite"
    integrity_error: type[Exception] = bundled_sqlite.IntegrityError

    def configure(self, config: Config) -> Config:
        return dataclasses.replace(config, database_path=self.path, database_url="")

    def _query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.path) as conn:
            return conn.execute(sql, params).fetchall()

    def rows(self) -> list[tuple[str, str]]:
        found = self._query("SELECT username, date_of_birth FROM users ORDER BY 1")
        return [(str(username), str(born)) for username, born in found]

    def updated_at(self, username: str) -> datetime:
        ((text,),) = self._query("SELECT updated_at FROM users WHERE username = ?", username)
        return datetime.fromisoformat(str(text))

    def schema_version(self) -> int:
        ((version,),) = self._query("PRAGMA user_version")
        return int(str(version))

    def set_schema_version(self, version: int) -> None:
        self._query(f"PRAGMA user_version = {int(version)}")

    def drop_users(self) -> None:
        self._query("DROP TABLE users")

    async def migrate(self) -> int:
        return sqlite_store.migrate(self.path)


@dataclasses.dataclass
class PostgresBackend:
    server: PostgresServer
    database: str
    name: str = "postgresql"
    integrity_error: type[Exception] = asyncpg.IntegrityConstraintViolationError

    @property
    def url(self) -> str:
        return self.server.url(self.database)

    def configure(self, config: Config) -> Config:
        return dataclasses.replace(config, database_url=self.url)

    def _query(self, sql: str) -> list[list[str]]:
        return self.server.sql(sql, self.database)

    def rows(self) -> list[tuple[str, str]]:
        found = self._query("SELECT username, to_char(date_of_birth, 'YYYY-MM-DD') FROM users ORDER BY 1")
        return [(username, born) for username, born in found]

    def updated_at(self, username: str) -> datetime:
        # Epoch milliseconds as stored: the test reads the stored value, not a rendering of it.
        ((millis,),) = self._query(
            f"SELECT (extract(epoch FROM updated_at) * 1000)::bigint FROM users WHERE username = '{username}'"
        )
        return datetime.fromtimestamp(int(millis) / 1000, UTC)

    def schema_version(self) -> int:
        ((version,),) = self._query("SELECT version FROM schema_version")
        return int(version)

    def set_schema_version(self, version: int) -> None:
        self._query(f"UPDATE schema_version SET version = {int(version)}")

    def drop_users(self) -> None:
        self._query("DROP TABLE users")

    async def migrate(self) -> int:
        return await pg_store.migrate(Config(database_url=self.url).postgres)


def migrations_and_one_more(folder: Path, backend: str, name: str, sql: str) -> int:
    """The project's migrations for ``backend`` ("sqlite", "postgresql") copied into ``folder``, then one
    more, ``<number>_<name>.sql``, holding ``sql``; its number."""
    folder.mkdir()
    migrations = load_migrations(migrations_dir(backend))
    for _, source in migrations:
        (folder / source.name).write_text(source.read_text())
    number = len(migrations) + 1
    (folder / f"{number:04d}_{name}.sql").write_text(sql)
    return number


async def open_backend_store(backend: Backend, tmp_path: Path) -> Store:
    """The store the service would open for this backend, with the service's own defaults."""
    return await open_store(backend.configure(Config(database_path=tmp_path / "unused.db")))
