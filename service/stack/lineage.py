"""Before serving: where the local database stands against the replica, and what to do about it.

Litestream 0.5 compares transaction numbers only. A local database behind the replica (an old volume
brought back from a snapshot) is made the replica's newest state; one ahead of it is taken as a
continuation even when it comes from another history (a lost machine's volume coming back after its
replacement took writes). Either silently rolls back acknowledged writes, so the supervisor asks this
module first and hands Litestream only a database that continues the replica's history.

The test is by lineage, not by number: a level-0 LTX file is the same file, byte for byte, in the
local state folder of the machine that cut it and in the replica, and its trailer carries a CRC-64 of
the whole file (``service/stack/replica.py``). So:

- the replica's newest level-0 file is also in the local state folder, same checksum: the local
  database holds the replica's newest state and perhaps more (``KEPT``: a normal restart);
- the local newest level-0 file is in the replica, same checksum, and the replica has more: the local
  database is an older state of the same history (``BEHIND``: an old volume);
- anything else: the two do not share the replica's newest state, or it cannot be shown that they do
  (``DIVERGED``). Both BEHIND and DIVERGED set the local file aside, restore the replica's latest and
  re-apply the set-aside rows that are newer than the replica's for the same user (none, for BEHIND).
  A database that cannot be placed costs a restore, never a write.
"""

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from service.stack.replica import LtxFile, Replica, local_file_checksum, local_level0
from service.store.sqlite import SELECT_ALL_ROWS, UPSERT_IF_NEWER, checkpoint, connect, connect_read_only

log = logging.getLogger(__name__)


class Standing(StrEnum):
    """What the boot found; the name is also the ``outcome`` label of ``hello_boot_outcome``."""

    NEW = "new"  # no local database and an empty replica: a first start
    RESTORED = "restored"  # no local database: restored from the replica (a fresh volume)
    KEPT = "kept"  # the local database holds the replica's newest state
    BEHIND = "behind"  # an older state of the replica's history: set aside, restored
    DIVERGED = "diverged"  # off the replica's history: set aside, restored, newer rows re-applied


@dataclass(frozen=True, slots=True)
class Placement:
    standing: Standing
    reason: str
    local_txid: int = 0
    replica_txid: int = 0


def state_dir(database: Path) -> Path:
    """Litestream's local state folder for ``database``: ``.<name>-litestream`` beside it."""
    return database.with_name(f".{database.name}-litestream")


def place(database: Path, replica: Replica) -> Placement:
    """Where the existing local ``database`` stands against ``replica``; reads only."""
    local = local_level0(state_dir(database))
    return place_files(local, lambda ltx: local_file_checksum(state_dir(database), ltx), replica)


def place_files(
    local: list[LtxFile], local_checksum: Callable[[LtxFile], bytes], replica: Replica
) -> Placement:
    remote = replica.level0()
    local_txid = local[-1].max_txid if local else 0
    if not remote:
        if replica.has_any_ltx():
            return Placement(
                Standing.DIVERGED,
                "the replica has no level-0 file to compare with (only compacted ones)",
                local_txid,
            )
        return Placement(
            Standing.KEPT, "the replica is empty: this database becomes its first state", local_txid
        )
    newest = remote[-1]
    replica_txid = newest.max_txid
    if not local:
        return Placement(
            Standing.DIVERGED,
            "the local database has no Litestream state, so it cannot be placed on the replica's history",
            local_txid,
            replica_txid,
        )
    local_by_name = {ltx.name: ltx for ltx in local}
    if newest.name in local_by_name:
        if local_checksum(local_by_name[newest.name]) == replica.file_checksum(newest):
            return Placement(
                Standing.KEPT, "it holds the replica's newest change (same file)", local_txid, replica_txid
            )
        return Placement(
            Standing.DIVERGED,
            f"its change {newest.name} differs from the replica's file of that name",
            local_txid,
            replica_txid,
        )
    mine = local[-1]
    if mine.max_txid < replica_txid:
        theirs = next((ltx for ltx in remote if ltx.name == mine.name), None)
        if theirs is not None and local_checksum(mine) == replica.file_checksum(theirs):
            return Placement(
                Standing.BEHIND,
                "its newest change is an older state of the replica's history",
                local_txid,
                replica_txid,
            )
        what = "differs from the replica's" if theirs is not None else "is not in the replica"
        return Placement(Standing.DIVERGED, f"its newest change {mine.name} {what}", local_txid, replica_txid)
    return Placement(
        Standing.DIVERGED,
        f"it is past transaction {replica_txid} but lacks the replica's newest change {newest.name}",
        local_txid,
        replica_txid,
    )


def set_aside(database: Path, now: datetime | None = None) -> Path:
    """Rename ``database`` (with its -wal and -shm files and Litestream state folder) out of the way.

    The new name carries the time (UTC); nothing is deleted. Returns the set-aside database's path.
    """
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    target = database.with_name(f"{database.name}.set-aside-{stamp}")
    number = 1
    while target.exists():
        number += 1
        target = database.with_name(f"{database.name}.set-aside-{stamp}-{number}")
    # Fold the -wal file into the database first, so that the one file holds everything and no
    # moment of the renames below leaves committed changes in a -wal file without its database.
    checkpoint(database)
    for suffix in ("", "-wal", "-shm"):
        source = database.with_name(database.name + suffix)
        if source.exists():
            source.rename(target.with_name(target.name + suffix))
    if state_dir(database).exists():
        state_dir(database).rename(state_dir(target))
    return target


class PendingReapply:
    """The set-aside files whose newer rows are still to be re-applied: ``.<db>.reapply-pending``,
    one path a line, surviving any crash.

    A file is added before anything is restored over it and removed only once its rows are
    re-applied, so a crash at any step leaves every set-aside file listed: a boot that restores again
    sets the restored copy aside too and adds it, never overwriting the list. Every change replaces
    the list atomically: write, fsync, rename, fsync the folder.
    """

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(f".{database.name}.reapply-pending")

    def entries(self) -> list[Path]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return [Path(line) for line in text.splitlines() if line.strip()]

    def add(self, aside: Path) -> None:
        self._write([*self.entries(), aside])

    def remove(self, aside: Path) -> None:
        self._write([entry for entry in self.entries() if entry != aside])

    def _write(self, pending: list[Path]) -> None:
        if not pending:
            self.path.unlink(missing_ok=True)
        else:
            draft = self.path.with_name(self.path.name + ".tmp")
            with draft.open("w") as out:
                out.write("".join(f"{path}\n" for path in pending))
                out.flush()
                os.fsync(out.fileno())
            os.replace(draft, self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


_REAPPLY_CHUNK = 10_000


def reapply_newer_rows(path: Path, source: Path) -> tuple[int, int]:
    """Copy into ``path`` each row of ``source`` that is newer than ``path``'s row for the same user.

    One transaction on a normal writing connection, so that Litestream, following ``path``,
    replicates the result like any other write. ``source`` is opened read-only and left as it is.
    Returns (rows read from ``source``, rows written to ``path``).
    """
    old = connect_read_only(source)
    conn = connect(path)
    try:
        read = 0
        before = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = old.execute(SELECT_ALL_ROWS)
            while rows := cursor.fetchmany(_REAPPLY_CHUNK):
                read += len(rows)
                conn.executemany(UPSERT_IF_NEWER, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return read, conn.total_changes - before
    finally:
        conn.close()
        old.close()
