"""No stranded rows: a machine that may not write delivers its database; the writer merges it.

A machine refused at start-up because another live writer holds the lease (a diverged volume that came
back, a partitioned writer restarted while the other serves) may hold acknowledged writes that exist
nowhere else. It may not replicate them itself. So it uploads a consistent copy of its database into
the replica's ``set-aside/`` prefix (beside the lease, outside every generation) and exits as before.
The writer looks there at start-up and once per lease TTL while serving (30 s by default): it re-applies
each copy's rows that are newer than its own for the same user (newest ``updated_at`` wins, as at
boot), on a normal writing connection so that Litestream replicates them, then moves the copy to
``merged/``. Nothing is deleted: a copy is either pending or merged.

A refused machine delivers the same database only once (``.<db>.delivered`` remembers the size and
modification time of the database and its ``-wal``), so a platform that restarts it in a loop does not
fill the bucket.
"""

import contextlib
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import pysqlite3.dbapi2 as sqlite

from service.contract import MergeTotals
from service.stack.lineage import reapply_newer_rows
from service.stack.replica import FileReplica, ReplicaUnavailable, S3Replica

log = logging.getLogger("service.stack.supervisor")

PENDING = "set-aside"
MERGED = "merged"


class Inbox(Protocol):
    """The replica's ``set-aside/`` and ``merged/`` prefixes."""

    def deliver(self, name: str, source: Path) -> None: ...
    def pending(self) -> list[str]: ...
    def fetch(self, name: str, target: Path) -> None: ...
    def mark_merged(self, name: str) -> None: ...


@dataclass(frozen=True)
class S3Inbox:
    replica: S3Replica

    def deliver(self, name: str, source: Path) -> None:
        with source.open("rb") as body:
            self.replica.call(
                "put_object",
                Bucket=self.replica.location.bucket,
                Key=self.replica.key(f"{PENDING}/{name}"),
                Body=body,
                ContentType="application/vnd.sqlite3",
            )

    def pending(self) -> list[str]:
        prefix = self.replica.key(f"{PENDING}/")
        names: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self.replica.call(
                "list_objects_v2", Bucket=self.replica.location.bucket, Prefix=prefix, **token
            )
            names.extend(item["Key"][len(prefix) :] for item in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return sorted(name for name in names if name and "/" not in name)
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def fetch(self, name: str, target: Path) -> None:
        answer = self.replica.call(
            "get_object", Bucket=self.replica.location.bucket, Key=self.replica.key(f"{PENDING}/{name}")
        )
        with target.open("wb") as out:
            for chunk in iter(lambda: answer["Body"].read(1 << 20), b""):
                out.write(chunk)

    def mark_merged(self, name: str) -> None:
        bucket = self.replica.location.bucket
        source = self.replica.key(f"{PENDING}/{name}")
        self.replica.call(
            "copy_object",
            Bucket=bucket,
            Key=self.replica.key(f"{MERGED}/{name}"),
            CopySource={"Bucket": bucket, "Key": source},
        )
        self.replica.call("delete_object", Bucket=bucket, Key=source)


@dataclass(frozen=True)
class FileInbox:
    replica: FileReplica

    def deliver(self, name: str, source: Path) -> None:
        folder = self.replica.root / PENDING
        folder.mkdir(parents=True, exist_ok=True)
        draft = folder / f".{name}.tmp"
        with source.open("rb") as src, draft.open("wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(draft, folder / name)

    def pending(self) -> list[str]:
        folder = self.replica.root / PENDING
        if not folder.is_dir():
            return []
        return sorted(path.name for path in folder.iterdir() if path.is_file() and path.suffix == ".db")

    def fetch(self, name: str, target: Path) -> None:
        target.write_bytes((self.replica.root / PENDING / name).read_bytes())

    def mark_merged(self, name: str) -> None:
        merged = self.replica.root / MERGED
        merged.mkdir(parents=True, exist_ok=True)
        os.replace(self.replica.root / PENDING / name, merged / name)


def inbox_for(replica: FileReplica | S3Replica) -> Inbox:
    return S3Inbox(replica) if isinstance(replica, S3Replica) else FileInbox(replica)


def _fingerprint(database: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for suffix in ("", "-wal"):
        with contextlib.suppress(FileNotFoundError):
            stat = database.with_name(database.name + suffix).stat()
            found[suffix or "db"] = [stat.st_size, stat.st_mtime_ns]
    return found


def _delivered_marker(database: Path) -> Path:
    return database.with_name(f".{database.name}.delivered")


def deliver(database: Path, inbox: Inbox, machine: str) -> int | None:
    """Upload a consistent copy of ``database`` to the inbox; its row count, or None when there was
    nothing to deliver (no database, no rows, or this very database delivered already)."""
    if not database.is_file() or database.stat().st_size == 0:
        return None
    marker = _delivered_marker(database)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(marker.read_text()) == _fingerprint(database):
            return None
    with tempfile.TemporaryDirectory(prefix="hello-birthday-deliver-") as folder:
        copy = Path(folder) / "copy.db"
        # VACUUM INTO reads one consistent state, the -wal's commits included, and leaves the source
        # as it is. The volume lock guarantees nothing else writes it meanwhile.
        source = sqlite.connect(str(database), isolation_level=None)
        try:
            rows = int(source.execute("SELECT count(*) FROM users").fetchone()[0])
            if rows == 0:
                return None
            source.execute("VACUUM INTO ?", (str(copy),))
        finally:
            source.close()
        safe_machine = "".join(char if char.isalnum() or char in "-_" else "_" for char in machine)
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{safe_machine}.db"
        inbox.deliver(name, copy)
    # Taken after the copy: closing the last connection may have folded the -wal into the database.
    draft = marker.with_name(marker.name + ".tmp")
    draft.write_text(json.dumps(_fingerprint(database)))
    os.replace(draft, marker)
    log.warning(
        f"this machine may not write (another holds the lease): delivered a copy of {database} with "
        f"{rows} rows to the replica's {PENDING}/{name}; the writer merges its newer rows",
        extra={"rows_delivered": rows, "set_aside": name},
    )
    return rows


@dataclass(frozen=True, slots=True)
class Merged:
    name: str
    rows_read: int
    rows_written: int


def merge_pending(database: Path, inbox: Inbox, may_write: "WriteCheck") -> list[Merged]:
    """Re-apply every pending delivery's newer rows into ``database``; move each one to merged/."""
    done: list[Merged] = []
    for name in inbox.pending():
        if not may_write():
            break
        with tempfile.TemporaryDirectory(prefix="hello-birthday-merge-") as folder:
            copy = Path(folder) / "delivered.db"
            inbox.fetch(name, copy)
            read, written = reapply_newer_rows(database, copy)
        inbox.mark_merged(name)
        done.append(Merged(name, read, written))
        log.warning(
            f"merged {written} of the {read} rows delivered by a machine that may not write "
            f"({PENDING}/{name}, newest updated_at wins); moved to {MERGED}/{name}",
            extra={"rows_set_aside": read, "rows_reapplied": written, "set_aside": name},
        )
    return done


class WriteCheck(Protocol):
    def __call__(self) -> bool: ...


def merge_quietly(database: Path, inbox: Inbox, may_write: WriteCheck) -> list[Merged]:
    """``merge_pending``, with an unreachable store or a broken delivery logged, not raised."""
    try:
        return merge_pending(database, inbox, may_write)
    except (ReplicaUnavailable, OSError, sqlite.Error) as exc:
        log.warning(
            "could not merge the deliveries of machines that may not write", extra={"reason": str(exc)}
        )
        return []


class Merger(threading.Thread):
    """Merges deliveries every ``interval`` seconds while this stack may write."""

    def __init__(
        self, database: Path, inbox: Inbox, may_write: WriteCheck, totals_file: Path, interval: float
    ) -> None:
        super().__init__(name="set-aside-merger", daemon=True)
        self.interval = interval
        self.database = database
        self.inbox = inbox
        self.may_write = may_write
        self.totals = MergeTotals()
        self.totals_file = totals_file
        self._stopping = threading.Event()

    def merge_now(self) -> None:
        if self.may_write():
            merged = merge_quietly(self.database, self.inbox, self.may_write)
            self.totals.deliveries += len(merged)
            self.totals.rows_read += sum(item.rows_read for item in merged)
            self.totals.rows_written += sum(item.rows_written for item in merged)
        self.totals.write(self.totals_file)

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            self.merge_now()

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=30)
