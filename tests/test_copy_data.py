"""``python -m service copy-data``: SQLite to PostgreSQL and back, on a real file and a real server.

Run as the command a user runs (a child process), then checked through each database directly.
"""

import subprocess
import sys
from pathlib import Path

import pysqlite3.dbapi2 as sqlite

from service.store.sqlite import migrate
from tests.pg_server import PostgresServer

ROWS = [
    ("Alice", "1990-05-17", "2026-12-01T10:00:00.123+00:00"),
    ("alice", "1985-01-02", "2026-12-01T11:00:00.000+00:00"),
    ("Zed", "2000-02-29", "2026-12-02T09:30:00.999+00:00"),
]


def _copy(source: str, target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "copy-data", "--from", source, "--to", target],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _sqlite_with(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    migrate(path)
    conn = sqlite.connect(str(path), isolation_level=None)
    conn.executemany("INSERT INTO users VALUES (?, ?, ?)", rows)
    conn.close()
    return path


def _sqlite_rows(path: Path) -> list[tuple[str, str, str]]:
    conn = sqlite.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return sorted(conn.execute("SELECT username, date_of_birth, updated_at FROM users"))
    finally:
        conn.close()


def test_sqlite_to_postgresql_and_back_is_exact_and_idempotent(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    source = _sqlite_with(tmp_path / "source.db", ROWS)
    database = postgres_server.create_database()
    url = postgres_server.url(database)

    first = _copy(str(source), url)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "rows written: 3" in first.stdout and "verified" in first.stdout
    stored = postgres_server.sql(
        "SELECT username, date_of_birth, to_char(updated_at AT TIME ZONE 'UTC', 'HH24:MI:SS.MS') "
        'FROM users ORDER BY username COLLATE "C"',
        database=database,
    )
    assert stored == [
        ["Alice", "1990-05-17", "10:00:00.123"],
        ["Zed", "2000-02-29", "09:30:00.999"],
        ["alice", "1985-01-02", "11:00:00.000"],
    ]

    again = _copy(str(source), url)
    assert again.returncode == 0 and "rows written: 0" in again.stdout, again.stdout

    back = tmp_path / "back.db"
    returned = _copy(url, f"sqlite://{back}")
    assert returned.returncode == 0, returned.stdout + returned.stderr
    assert _sqlite_rows(back) == sorted(ROWS)
    checksums = {
        line.split("sha256 ")[1]
        for line in first.stdout.splitlines() + returned.stdout.splitlines()
        if "sha256" in line
    }
    assert len(checksums) == 1, "the same rows give the same checksum on either backend"


def test_a_target_with_newer_or_other_rows_is_reported(tmp_path: Path) -> None:
    source = _sqlite_with(tmp_path / "source.db", ROWS)
    target = _sqlite_with(tmp_path / "target.db", [("Alice", "1970-01-01", "2026-12-03T00:00:00.000+00:00")])
    result = _copy(str(source), str(target))
    assert result.returncode == 1
    assert "rows written: 2" in result.stdout and "differs" in result.stdout
    assert {name: born for name, born, _ in _sqlite_rows(target)}["Alice"] == "1970-01-01"  # newest wins


def test_bad_arguments_and_unreachable_databases_are_named(tmp_path: Path) -> None:
    assert _copy(str(tmp_path / "x.db"), str(tmp_path / "x.db")).returncode == 1
    missing = _copy(str(tmp_path / "missing.db"), str(tmp_path / "out.db"))
    assert missing.returncode == 1 and "no SQLite database" in missing.stdout
    refused = _copy(str(_sqlite_with(tmp_path / "s.db", ROWS)), "postgresql://nobody@127.0.0.1:1/none")
    assert refused.returncode == 1 and "copy-data: failed" in refused.stdout
    usage = subprocess.run(
        [sys.executable, "-m", "service", "copy-data", "--from"], capture_output=True, text=True
    )
    assert usage.returncode == 2 and "usage" in usage.stderr and "--from" in usage.stderr
