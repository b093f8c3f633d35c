"""The seeded users, named as the wrk scripts name them, and byte copies of the seeded database."""

from __future__ import annotations

import os
import shutil
from datetime import date, timedelta
from pathlib import Path

from service.store.sqlite import connect, migrate

# Seeded users are "u" plus five lowercase letters, the index in base 26: sorted by index, so the
# seeding insert appends to the primary key's B-tree; the wrk scripts compute the same names.
_NAME_LETTERS = 5
_FIRST_BIRTHDAY = date(1950, 1, 1)


def username_for(index: int) -> str:
    """The name of seeded user ``index`` (0 <= index < 26**5)."""
    letters = []
    for _ in range(_NAME_LETTERS):
        index, digit = divmod(index, 26)
        letters.append(chr(97 + digit))
    return "u" + "".join(reversed(letters))


def birthday_for(index: int) -> date:
    """A spread of past dates of birth, 1950 to 2004."""
    return _FIRST_BIRTHDAY + timedelta(days=(index * 7919) % 20000)


def seed_database(path: Path, users: int) -> None:
    """Migrate ``path`` and insert ``users`` seeded users in one transaction."""
    migrate(path)
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO users (username, date_of_birth, updated_at) VALUES (?, ?, ?)",
            (
                (username_for(i), birthday_for(i).isoformat(), "2026-01-01T00:00:00.000+00:00")
                for i in range(users)
            ),
        )
        conn.execute("COMMIT")
        # Fold the WAL into the file, so that a byte copy of the file alone is the whole database.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    flush_to_disk(path)


def copy_database(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    flush_to_disk(target)


def flush_to_disk(path: Path) -> None:
    """Write the file's dirty pages out now, so that the kernel does not do it during a measurement."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
