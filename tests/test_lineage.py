"""Where a local database stands against the replica, on real files in Litestream's layout.

The LTX files here are written by the test with the shape Litestream 0.5 gives them (a 100-byte
header, pages, a 16-byte trailer ending with the file's CRC-64): the decision reads names and trailers
only. The drills (tests/drills/test_lineage.py) run the same code against real Litestream replicas.
"""

import os
from pathlib import Path

import pysqlite3.dbapi2 as sqlite
import pytest

from service.stack.lineage import Standing, place, reapply_newer_rows, set_aside, state_dir
from service.stack.replica import FileReplica, LtxFile
from service.store.sqlite import migrate


def _ltx(folder: Path, first: int, last: int, content: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = b"LTX1" + bytes(96) + content + bytes(8) + content[:8].ljust(8, b"-")
    (folder / f"{first:016x}-{last:016x}.ltx").write_bytes(body)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "hello.db"
    migrate(path)
    return path


@pytest.fixture
def replica(tmp_path: Path) -> FileReplica:
    root = tmp_path / "replica"
    return FileReplica(url=f"file://{root}", root=root)


def _local(database: Path) -> Path:
    return state_dir(database) / "ltx" / "0"


def _remote(replica: FileReplica) -> Path:
    return replica.root / "ltx" / "0"


def test_an_empty_replica_keeps_the_local_database(database: Path, replica: FileReplica) -> None:
    _ltx(_local(database), 1, 1, b"snapshot")
    assert place(database, replica).standing is Standing.KEPT


def test_the_same_newest_file_keeps_it_and_so_does_more_on_top(database: Path, replica: FileReplica) -> None:
    for number, content in ((1, b"snapshot"), (2, b"second"), (3, b"third")):
        _ltx(_local(database), number, number, content)
        _ltx(_remote(replica), number, number, content)
    assert place(database, replica).standing is Standing.KEPT
    _ltx(_local(database), 4, 4, b"unsynced")  # a crash before the last upload
    placement = place(database, replica)
    assert placement.standing is Standing.KEPT
    assert (placement.local_txid, placement.replica_txid) == (4, 3)


def test_an_older_state_of_the_same_history_is_behind(database: Path, replica: FileReplica) -> None:
    for number, content in ((1, b"snapshot"), (2, b"second")):
        _ltx(_local(database), number, number, content)
    for number, content in ((1, b"snapshot"), (2, b"second"), (3, b"third"), (4, b"fourth")):
        _ltx(_remote(replica), number, number, content)
    placement = place(database, replica)
    assert placement.standing is Standing.BEHIND
    assert (placement.local_txid, placement.replica_txid) == (2, 4)


@pytest.mark.parametrize(
    ("local", "remote"),
    [
        # Same transaction numbers, other content: another machine's history from txid 3 on.
        (
            [(1, b"snapshot"), (2, b"second"), (3, b"mine")],
            [(1, b"snapshot"), (2, b"second"), (3, b"theirs")],
        ),
        # Ahead by number, but without the replica's newest change.
        ([(1, b"snapshot"), (2, b"second"), (3, b"mine"), (4, b"more")], [(1, b"snapshot"), (3, b"theirs")]),
        # Behind by number, and its newest change is not the replica's.
        ([(1, b"snapshot"), (2, b"mine")], [(1, b"snapshot"), (2, b"theirs"), (3, b"third")]),
        # Behind by number, and its newest change is no longer in the replica (compacted away).
        ([(1, b"snapshot"), (2, b"second")], [(3, b"third"), (4, b"fourth")]),
        # No local Litestream state at all.
        ([], [(1, b"snapshot")]),
    ],
)
def test_anything_else_is_diverged(
    database: Path,
    replica: FileReplica,
    local: list[tuple[int, bytes]],
    remote: list[tuple[int, bytes]],
) -> None:
    for number, content in local:
        _ltx(_local(database), number, number, content)
    for number, content in remote:
        _ltx(_remote(replica), number, number, content)
    assert place(database, replica).standing is Standing.DIVERGED


def test_compacted_files_only_cannot_be_compared(database: Path, replica: FileReplica) -> None:
    _ltx(_local(database), 1, 1, b"snapshot")
    _ltx(replica.root / "ltx" / "9", 1, 5, b"compacted")
    assert place(database, replica).standing is Standing.DIVERGED


def test_ltx_names_parse_and_order_by_transaction() -> None:
    later = LtxFile.parse("0000000000000001-000000000000000a.ltx", 1)
    earlier = LtxFile.parse("0000000000000002-0000000000000002.ltx", 1)
    assert later is not None and earlier is not None
    assert sorted([later, earlier]) == [earlier, later]
    assert (later.min_txid, later.max_txid) == (1, 10)
    assert LtxFile.parse("notes.txt", 1) is None


def _rows(path: Path) -> dict[str, tuple[str, str]]:
    connection = sqlite.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {name: (born, at) for name, born, at in connection.execute("SELECT * FROM users")}
    finally:
        connection.close()


def _write(path: Path, rows: list[tuple[str, str, str]]) -> None:
    connection = sqlite.connect(str(path), isolation_level=None)
    try:
        connection.executemany("INSERT OR REPLACE INTO users VALUES (?, ?, ?)", rows)
    finally:
        connection.close()


def test_set_aside_keeps_every_committed_change_under_a_new_name(database: Path) -> None:
    _write(database, [("Alice", "1990-01-02", "2026-12-01T10:00:00.000+00:00")])
    # An uncheckpointed change in the -wal file, as a crash leaves it.
    keeper = sqlite.connect(str(database), isolation_level=None)
    keeper.execute("PRAGMA wal_autocheckpoint = 0")
    keeper.execute("INSERT INTO users VALUES ('Bob', '1991-03-04', '2026-12-01T10:00:01.000+00:00')")
    _ltx(_local(database), 1, 1, b"snapshot")
    aside = set_aside(database)
    keeper.close()
    assert not database.exists() and not state_dir(database).exists()
    assert set(_rows(aside)) == {"Alice", "Bob"}
    assert (state_dir(aside) / "ltx" / "0").is_dir()
    assert aside.name.startswith("hello.db.set-aside-")


def test_reapplying_takes_only_rows_newer_than_the_stored_ones(tmp_path: Path, database: Path) -> None:
    _write(
        database,
        [
            ("Same", "1980-01-01", "2026-12-01T10:00:00.000+00:00"),
            ("Newerhere", "1981-01-01", "2026-12-01T12:00:00.000+00:00"),
            ("Olderhere", "1982-01-01", "2026-12-01T09:00:00.000+00:00"),
        ],
    )
    old = tmp_path / "aside.db"
    migrate(old)
    _write(
        old,
        [
            ("Same", "1980-01-01", "2026-12-01T10:00:00.000+00:00"),
            ("Newerhere", "1971-01-01", "2026-12-01T11:00:00.000+00:00"),
            ("Olderhere", "1972-01-01", "2026-12-01T11:00:00.000+00:00"),
            ("Onlythere", "1973-01-01", "2026-12-01T08:00:00.000+00:00"),
        ],
    )
    before = os.stat(old).st_mtime_ns
    assert reapply_newer_rows(database, old) == (4, 2)
    rows = _rows(database)
    assert rows["Same"][0] == "1980-01-01"
    assert rows["Newerhere"][0] == "1981-01-01"
    assert rows["Olderhere"] == ("1972-01-01", "2026-12-01T11:00:00.000+00:00")
    assert rows["Onlythere"][0] == "1973-01-01"
    assert reapply_newer_rows(database, old) == (4, 0)  # idempotent
    assert os.stat(old).st_mtime_ns == before
