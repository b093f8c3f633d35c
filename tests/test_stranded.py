"""No stranded rows: a refused machine's database delivered once to the replica's set-aside/, merged by
the writer newest-wins, then moved to merged/. Real SQLite files and a real file:// replica folder."""

from pathlib import Path

from service.contract import MergeTotals
from service.stack.replica import FileReplica
from service.stack.stranded import deliver, inbox_for, merge_pending
from service.store.sqlite import connect, migrate
from tests.support import birthdays


def _database(path: Path, rows: dict[str, tuple[str, str]]) -> Path:
    migrate(path)
    conn = connect(path)
    try:
        conn.executemany(
            "INSERT INTO users (username, date_of_birth, updated_at) VALUES (?, ?, ?)",
            [(name, born, at) for name, (born, at) in rows.items()],
        )
    finally:
        conn.close()
    return path


def test_a_refused_machine_delivers_once_and_the_writer_merges_newest_wins(tmp_path: Path) -> None:
    replica = FileReplica(url=f"file://{tmp_path / 'replica'}", root=tmp_path / "replica")
    inbox = inbox_for(replica)
    refused = _database(
        tmp_path / "a" / "hello.db",
        {
            "Onlyona": ("1990-01-01", "2026-12-06T10:00:00.000+00:00"),
            "Newerona": ("1991-02-02", "2026-12-06T10:00:05.000+00:00"),
            "Olderona": ("1992-03-03", "2026-12-06T09:00:00.000+00:00"),
        },
    )
    writer = _database(
        tmp_path / "b" / "hello.db",
        {
            "Newerona": ("2001-01-01", "2026-12-06T10:00:01.000+00:00"),
            "Olderona": ("2002-02-02", "2026-12-06T10:00:01.000+00:00"),
        },
    )

    assert deliver(refused, inbox, "machine/a") == 3
    assert deliver(refused, inbox, "machine/a") is None, "the same database is delivered only once"
    assert len(inbox.pending()) == 1 and inbox.pending()[0].endswith("-machine_a.db")

    merged = merge_pending(writer, inbox, lambda: True)
    assert [(item.rows_read, item.rows_written) for item in merged] == [(3, 2)]
    assert birthdays(writer) == {"Onlyona": "1990-01-01", "Newerona": "1991-02-02", "Olderona": "2002-02-02"}
    assert inbox.pending() == []
    assert [path.name for path in (replica.root / "merged").iterdir()] == [merged[0].name], "kept, moved"
    assert birthdays(refused) == {
        "Onlyona": "1990-01-01",
        "Newerona": "1991-02-02",
        "Olderona": "1992-03-03",
    }, "the refused machine's own database is left as it is"


def test_a_writer_that_may_not_write_merges_nothing(tmp_path: Path) -> None:
    replica = FileReplica(url=f"file://{tmp_path / 'replica'}", root=tmp_path / "replica")
    inbox = inbox_for(replica)
    deliver(
        _database(tmp_path / "a" / "hello.db", {"Alice": ("1990-01-01", "2026-12-06T10:00:00+00:00")}),
        inbox,
        "a",
    )
    writer = _database(tmp_path / "b" / "hello.db", {})
    assert merge_pending(writer, inbox, lambda: False) == []
    assert len(inbox.pending()) == 1 and birthdays(writer) == {}


def test_nothing_to_deliver_without_rows(tmp_path: Path) -> None:
    replica = FileReplica(url=f"file://{tmp_path / 'replica'}", root=tmp_path / "replica")
    assert deliver(tmp_path / "missing.db", inbox_for(replica), "a") is None
    assert deliver(_database(tmp_path / "empty.db", {}), inbox_for(replica), "a") is None
    assert inbox_for(replica).pending() == []


def test_merge_totals_round_trip(tmp_path: Path) -> None:
    totals = MergeTotals(2, 30, 12)
    totals.write(tmp_path / "merged.json")
    assert MergeTotals.read(tmp_path / "merged.json") == totals
    assert MergeTotals.read(tmp_path / "missing.json") == MergeTotals()
