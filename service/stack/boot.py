"""The supervisor's start-up as a list of steps (``STEPS``), each bounded in time and each failure a
message that names it:

1. ``lock_volume``: one stack, and one restore, per database folder.
2. ``take_lease``: the writer lease on the replica path (``service/stack/lease/``), renewed from this
   moment on; refused while another writer holds it, after handing this volume's rows to that writer.
3. ``place_database``: the local database against the replica (``service/stack/lineage.py``). None:
   restore the replica's latest (none yet is fine on a first start). Holding the replica's newest
   state: keep it. Behind or off the replica's history: set it aside, restore the latest, and later
   re-apply its newer rows. After a takeover from a lapsed writer, replicate into a new generation.
4. ``migrate_database``: apply the migrations.
5. ``start_litestream``: start Litestream and wait for its first sync: until then it would not
   replicate a write.
6. ``reapply_set_aside_rows``: the set-aside rows that are newer than the restored ones, as ordinary
   writes.
7. ``merge_delivered_rows``: what refused machines delivered through the replica, now and then once per
   lease TTL.
8. ``start_gunicorn``: the worker, told what it needs through ``service/contract.py``.

Steps 5 and 8 begin by checking that the lease surely holds. Each step reads and fills one ``Boot``.
"""

import dataclasses
import logging
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from service import contract
from service.contract import BootReport
from service.lease_deadline import SharedDeadline
from service.settings import StackSettings
from service.stack.lease import (
    FileLock,
    Holder,
    LeaseHeld,
    LeaseKeeper,
    WriterLease,
    release_quietly,
    volume_lock,
    writer_lease,
)
from service.stack.lineage import (
    PendingReapply,
    Placement,
    Standing,
    place,
    reapply_newer_rows,
    set_aside,
    state_dir,
)
from service.stack.litestream import STOP_SECONDS as LITESTREAM_STOP_SECONDS
from service.stack.litestream import Litestream
from service.stack.processes import spawn, stop_process
from service.stack.replica import FileReplica, ReplicaUnavailable, S3Replica, generation_url, open_replica
from service.stack.restore import BootError, restore_latest
from service.stack.stranded import Merger, deliver, inbox_for
from service.store.sqlite import DatabaseError, migrate

log = logging.getLogger("service.stack.supervisor")

T = TypeVar("T")

_POLL_SECONDS = 0.1
_WHERE = {Standing.BEHIND: "behind the replica", Standing.DIVERGED: "off the replica's history (diverged)"}


@dataclass(frozen=True, slots=True)
class RuntimeFiles:
    """The files the supervisor shares with its worker (``service/contract.py``), one set per stack."""

    fence: Path
    deadline: Path
    merged: Path

    @classmethod
    def under(cls, folder: Path, pid: int) -> "RuntimeFiles":
        return cls(
            fence=folder / f"hello-birthday-fence.{pid}",
            deadline=folder / f"hello-birthday-lease-deadline.{pid}",
            merged=folder / f"hello-birthday-merged.{pid}",
        )

    def remove(self) -> None:
        for path in (self.fence, self.deadline, self.merged):
            path.unlink(missing_ok=True)


@dataclass
class Boot:
    """What the steps know so far: set up by ``Boot.begin``, filled step by step."""

    settings: StackSettings
    environ: dict[str, str]
    holder: Holder
    files: RuntimeFiles
    volume: FileLock
    pending: PendingReapply
    # Where the data comes from and where Litestream writes: the lease's generations.
    read_url: str
    write_url: str
    replica: FileReplica | S3Replica | None = None
    lease: WriterLease | None = None
    keeper: LeaseKeeper | None = None
    placement: Placement | None = None
    report: BootReport = field(default_factory=lambda: BootReport("unknown"))
    litestream: Litestream | None = None
    merger: Merger | None = None
    gunicorn: "subprocess.Popen[bytes] | None" = None

    @classmethod
    def begin(cls, settings: StackSettings, environ: dict[str, str], pid: int) -> "Boot":
        holder = Holder.me(settings.database, environ)
        return cls(
            settings=settings,
            environ=environ,
            holder=holder,
            files=RuntimeFiles.under(settings.runtime_dir, pid),
            volume=volume_lock(settings.database, holder),
            pending=PendingReapply(settings.database),
            read_url=settings.replica_url,
            write_url=settings.replica_url,
        )

    def may_write(self) -> bool:
        """The lease surely holds: not lost, and its deadline not passed."""
        keeper = self.keeper
        return keeper is not None and keeper.lost is None and keeper.deadline.remaining() > 0

    def abandon(self) -> None:
        """Start-up stopped part way: stop what started, newest first; release the lease if held."""
        held = self.keeper is None or self.may_write()
        if self.keeper is not None:
            self.keeper.stop()
        if self.gunicorn is not None:
            stop_process(self.gunicorn, signal.SIGTERM if held else signal.SIGKILL, LITESTREAM_STOP_SECONDS)
        if self.litestream is not None:
            # Litestream's final sync only while this stack surely holds the lease.
            self.litestream.stop(final_sync=held)
        if self.lease is not None and held:
            release_quietly(self.lease)

    def close(self) -> None:
        """Whatever happened: nothing of this stack's left running or lying around."""
        if self.merger is not None:
            self.merger.stop()
        if self.keeper is not None:
            self.keeper.stop()
            self.keeper.deadline.remove()
        self.volume.release()
        self.files.remove()


# --- 1, 2. The volume and the lease ---------------------------------------------------------------


def lock_volume(boot: Boot) -> None:
    boot.volume.acquire()


def take_lease(boot: Boot) -> None:
    """Take the writer lease, share its deadline with the worker to come, and renew it from now on."""
    settings = boot.settings
    boot.replica = replica = open_replica(settings.replica_url, boot.environ)
    # Known before it is taken: an abandoned boot releases it if an answer was lost on the way.
    boot.lease = lease = writer_lease(replica, boot.holder, settings.lease_ttl)
    try:
        taken = within_restore_timeout(settings, "taking the writer lease", lease.acquire)
    except LeaseHeld:
        _deliver_stranded_rows(boot, replica)
        raise
    log.info(f"writer lease on {settings.replica_url} {taken}")
    deadline = SharedDeadline.create(boot.files.deadline, lease.deadline())
    boot.keeper = LeaseKeeper(lease, settings.lease_ttl / 3, deadline)
    boot.keeper.start()
    boot.read_url = generation_url(settings.replica_url, lease.previous_generation)
    boot.write_url = generation_url(settings.replica_url, lease.generation)


def _deliver_stranded_rows(boot: Boot, replica: FileReplica | S3Replica) -> None:
    """Refused: another writer holds the lease. Hand this volume's rows to it through the replica."""
    try:
        deliver(boot.settings.database, inbox_for(replica), boot.holder.machine)
    except (ReplicaUnavailable, OSError, DatabaseError) as exc:
        log.error(
            f"could not deliver the rows of {boot.settings.database} to the replica; they stay on "
            "this volume for the next start",
            extra={"reason": str(exc)},
        )


def check_lease(boot: Boot, step: str) -> None:
    """Go on only while the lease surely holds: wait (up to one TTL) for a renewal past its deadline."""
    keeper = boot.keeper
    assert keeper is not None, "take_lease comes first"
    ttl = boot.settings.lease_ttl
    give_up = time.monotonic() + ttl
    while keeper.lost is None and keeper.deadline.remaining() <= 0:
        if time.monotonic() >= give_up:
            raise BootError(
                f"{step}: the writer lease could not be renewed within {ttl:g} s (WRITER_LEASE_TTL) of "
                "its deadline: another machine may take it, so this one does not start writing"
            )
        time.sleep(_POLL_SECONDS)
    if keeper.lost is not None:
        raise BootError(f"{step}: {keeper.lost}; this stack does not start writing")


def within_restore_timeout(settings: StackSettings, what: str, action: Callable[[], T]) -> T:
    """Retry ``action`` while the replica cannot be reached, up to RESTORE_TIMEOUT."""
    deadline = time.monotonic() + settings.restore_timeout
    while True:
        try:
            return action()
        except ReplicaUnavailable as exc:
            if exc.transient and time.monotonic() < deadline:
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                continue
            if exc.transient:
                raise BootError(
                    f"{what}: REPLICA_URL ({settings.replica_url}) did not answer within "
                    f"{settings.restore_timeout:g} s (RESTORE_TIMEOUT): {exc}. Not serving without "
                    "knowing where the local database stands."
                ) from None
            raise BootError(f"{what}: REPLICA_URL ({settings.replica_url}) refused: {exc}") from None


# --- 3. The local database against the replica -----------------------------------------------------


def place_database(boot: Boot) -> None:
    settings = boot.settings
    database = settings.database
    database.parent.mkdir(parents=True, exist_ok=True)
    # An empty file is what an interrupted first start leaves; it counts as missing.
    if database.is_file() and database.stat().st_size == 0:
        wal = database.with_name(database.name + "-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            raise BootError(
                f"{database} is empty but its -wal file is not: look at it by hand before starting"
            )
        log.info(f"{database} is empty: treating it as missing")
        database.unlink()
    if not database.exists():
        boot.placement = Placement(_restore(boot), "no local database")
    else:
        boot.placement = _place_existing(boot)
    if boot.read_url != boot.write_url:
        _start_generation(boot)


def _place_existing(boot: Boot) -> Placement:
    database = boot.settings.database
    source = boot.replica
    if source is None or boot.read_url != boot.settings.replica_url:
        source = open_replica(boot.read_url, boot.environ)
    placement = within_restore_timeout(boot.settings, "reading the replica", lambda: place(database, source))
    figures = {"local_txid": placement.local_txid, "replica_txid": placement.replica_txid}
    if placement.standing is Standing.KEPT:
        log.info(f"keeping {database}: {placement.reason}", extra=figures)
        return placement
    aside = set_aside(database)
    boot.pending.add(aside)
    log.warning(
        f"{database} is {_WHERE[placement.standing]} ({placement.reason}): set aside as {aside}; "
        "restoring the replica's latest",
        extra={**figures, "outcome": str(placement.standing), "set_aside": str(aside)},
    )
    if _restore(boot) is not Standing.RESTORED:
        raise BootError(f"the replica {boot.read_url} had nothing to restore after all")
    return placement


def _restore(boot: Boot) -> Standing:
    return restore_latest(boot.settings, boot.environ, boot.read_url)


def _start_generation(boot: Boot) -> None:
    """After a takeover: Litestream starts the new generation afresh, with a full snapshot of the
    database as placed (its state folder follows the previous generation's files)."""
    shutil.rmtree(state_dir(boot.settings.database), ignore_errors=True)
    log.warning(
        f"replicating into a new generation, {boot.write_url}: the previous writer did not release "
        f"the lease and may still be running; its generation {boot.read_url} is left as it is",
        extra={"generation": boot.lease.generation if boot.lease else ""},
    )


# --- 4 to 8 ---------------------------------------------------------------------------------------------


def migrate_database(boot: Boot) -> None:
    migrate(boot.settings.database)


def start_litestream(boot: Boot) -> None:
    check_lease(boot, "before starting Litestream")
    boot.litestream = Litestream(boot.settings, boot.environ, boot.write_url)
    boot.litestream.wait_for_first_sync()


def reapply_set_aside_rows(boot: Boot) -> None:
    assert boot.placement is not None, "place_database comes first"
    report = BootReport(str(boot.placement.standing))
    total_read = total_written = 0
    for aside in boot.pending.entries():
        read, written = reapply_newer_rows(boot.settings.database, aside)
        boot.pending.remove(aside)
        total_read, total_written = total_read + read, total_written + written
        report = BootReport(report.outcome, str(aside), total_read, total_written)
        log.warning(
            f"re-applied {written} of the {read} rows of {aside} that were newer than the replica's "
            "(newest updated_at wins); the file stays for inspection",
            extra={"rows_set_aside": read, "rows_reapplied": written, "set_aside": str(aside)},
        )
    boot.report = report


def merge_delivered_rows(boot: Boot) -> None:
    """Merge what refused machines delivered: once now, then once per lease TTL while writing."""
    assert boot.replica is not None, "take_lease comes first"
    boot.merger = Merger(
        boot.settings.database,
        inbox_for(boot.replica),
        boot.may_write,
        boot.files.merged,
        boot.settings.lease_ttl,
    )
    boot.merger.merge_now()
    boot.merger.start()


def start_gunicorn(boot: Boot) -> None:
    check_lease(boot, "before serving")
    assert boot.litestream is not None and boot.lease is not None, "start_litestream comes first"
    report = dataclasses.replace(boot.report, generation=boot.lease.generation)
    env = {
        **boot.environ,
        contract.LITESTREAM_PID: str(boot.litestream.pid),
        contract.WRITER_FENCE_FILE: str(boot.files.fence),
        contract.WRITER_LEASE_DEADLINE_FILE: str(boot.files.deadline),
        contract.SET_ASIDE_MERGED_FILE: str(boot.files.merged),
        contract.BOOT_REPORT: report.to_json(),
    }
    log.info("Litestream follows the database; starting gunicorn")
    config = boot.settings.gunicorn_config
    boot.gunicorn = spawn(["gunicorn", "-c", str(config)], env, cwd=config.parent)


STEPS: tuple[Callable[[Boot], None], ...] = (
    lock_volume,
    take_lease,
    place_database,
    migrate_database,
    start_litestream,
    reapply_set_aside_rows,
    merge_delivered_rows,
    start_gunicorn,
)
