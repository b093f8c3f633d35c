"""Numbered SQL migration files, for either backend: where they are, and that they run 1, 2, 3, ..."""

import re
from pathlib import Path

_MIGRATION_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")

# The SQLite files sit in the migrations folder itself (as they always have); PostgreSQL's in a
# subfolder of their own, so that each backend's SQL is written for that backend.
_SUBFOLDER = {"sqlite": "", "postgresql": "postgres"}


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer release than this one."""


class NotMigrated(RuntimeError):
    """The database schema is not at the version this release expects."""


def migrations_dir(backend: str = "sqlite") -> Path:
    """Where a backend's numbered SQL files are: inside the installed package, or at the repository root."""
    package = Path(__file__).resolve().parent.parent  # service/
    for candidate in (package / "migrations", package.parent / "migrations"):
        if candidate.is_dir():
            return candidate / _SUBFOLDER[backend]
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


def too_new(where: str, current: int, latest: int) -> SchemaTooNew:
    return SchemaTooNew(
        f"database {where} has schema version {current}, but this release knows only up to "
        f"{latest}; run a newer release or restore an older copy"
    )
