"""The SQLite backend's names where the supervisor, the lineage check and the disk guard import them.

The store lives in ``service/store/`` (``service/store/sqlite.py`` for SQLite); this module only
re-exports, so that those modules keep their imports.
"""

from service.store.migrations import NotMigrated, SchemaTooNew, load_migrations, migrations_dir
from service.store.sqlite import (
    SQLITE_VERSION,
    DatabaseError,
    SqliteStore,
    checkpoint,
    connect,
    is_disk_full,
    migrate,
    reapply_newer_rows,
)

UserStore = SqliteStore

__all__ = [
    "SQLITE_VERSION",
    "DatabaseError",
    "NotMigrated",
    "SchemaTooNew",
    "SqliteStore",
    "UserStore",
    "checkpoint",
    "connect",
    "is_disk_full",
    "load_migrations",
    "migrate",
    "migrations_dir",
    "reapply_newer_rows",
]
