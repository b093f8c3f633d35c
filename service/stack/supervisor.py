"""The production stack's supervisor: ``python -m service supervise`` (scripts/start.sh execs it).

Before serving, in order, each step bounded in time and each failure a message that names it:

1. Lock the volume (one stack, and one restore, per database folder).
2. Take the writer lease on the replica path (``service/stack/lease.py``); refuse while another writer
   holds it.
3. Place the local database against the replica (``service/stack/lineage.py``). No local database: restore
   the replica's latest (none yet is fine on a first start). Holding the replica's newest state: keep
   it. Behind or off the replica's history: set it aside, restore the latest, and later re-apply its
   newer rows.
4. Apply the migrations.
5. Start Litestream and wait for its first sync: until then it would not replicate a write.
6. Re-apply the set-aside rows that are newer than the restored ones, as ordinary writes.
7. Start gunicorn.

Litestream and gunicorn run side by side as this process's children, each in a process group of its
own (a Ctrl-C in a terminal reaches only this process) and each killed by the kernel if this process
dies (``PR_SET_PDEATHSIG``), so that no orphan keeps the port or the database. While serving:

- SIGTERM or SIGINT: gunicorn drains and exits, then Litestream makes its final sync, then the lease
  is released. Further stop signals are logged and ignored: they cannot cut the final sync short.
- SIGHUP is passed to gunicorn (a reload).
- Litestream dies: gunicorn's worker stops taking writes at once (it watches Litestream's process,
  ``service/http/write_guard.py``); this process stops gunicorn and exits non-zero, so that the
  platform restarts the stack. A restart on the same volume replicates what was committed meanwhile.
- gunicorn exits: Litestream syncs and stops; exit non-zero.
- The object store says that another writer took the lease: the worker is told (the fence file) and
  Litestream is killed without a final sync, so nothing of the other writer's history is overwritten.
  Writes and readiness answer 503 until the stack is stopped.
- The lease's deadline passes (no renewal got through in time: the store, or the path to it, is
  down; ``service/lease_deadline.py``): the worker refuses writes by itself, and Litestream is paused
  (SIGSTOP), so that neither acknowledges nor uploads anything once another machine could take the
  lease. The keeper goes on trying; the first renewal that gets through resumes Litestream (SIGCONT)
  and writes. A stop meanwhile kills Litestream without a final sync and leaves the lease to lapse.

The lease is renewed from the moment it is taken: during placement, restore and the first sync too.
"""

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TypeVar

from service import contract
from service.contract import BootReport
from service.lease_deadline import SharedDeadline
from service.logs import configure_logging
from service.settings import Config, ConfigError, StackSettings, environment
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
from service.stack.lineage import PendingReapply, Placement, Standing, place, set_aside, state_dir
from service.stack.processes import describe_exit, spawn, stop_process
from service.stack.replica import FileReplica, ReplicaUnavailable, S3Replica, generation_url, open_replica
from service.stack.restore import BootError, restore_latest
from service.stack.stranded import Merger, deliver, inbox_for
from service.store.migrations import SchemaTooNew
from service.store.sqlite import DatabaseError, migrate, reapply_newer_rows

log = logging.getLogger("service.stack.supervisor")

T = TypeVar("T")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How long Litestream may take to stop after SIGTERM: litestream.yml's shutdown-sync-timeout (10 s)
# and some room to close.
_LITESTREAM_STOP_SECONDS = 20.0
_POLL_SECONDS = 0.1
# After Litestream died every write is refused, so gunicorn gets only this long to finish the reads in
# flight before it is killed: the platform's restart is what brings writes back.
_DRAIN_WITHOUT_LITESTREAM_SECONDS = 3.0
_WHERE = {Standing.BEHIND: "behind the replica", Standing.DIVERGED: "off the replica's history (diverged)"}


class StopRequested(BaseException):
    """A stop signal arrived while booting (BaseException, so that no ``except Exception`` eats it)."""


@dataclass
class Supervisor:
    config: Config
    settings: StackSettings
    environ: dict[str, str]
    holder: Holder = field(init=False)
    stop_signals: int = 0

    def __post_init__(self) -> None:
        self.holder = Holder.me(self.settings.database, self.environ)
        self.fence_file = self.settings.runtime_dir / f"hello-birthday-fence.{os.getpid()}"
        self.deadline_file = self.settings.runtime_dir / f"hello-birthday-lease-deadline.{os.getpid()}"
        self.pending = PendingReapply(self.settings.database)
        self.keeper: LeaseKeeper | None = None
        self.merger: Merger | None = None
        self.merged_file = self.settings.runtime_dir / f"hello-birthday-merged.{os.getpid()}"
        # Where the data comes from and where Litestream writes: the lease's generations.
        self.read_url = self.write_url = self.settings.replica_url

    # --- Signals -----------------------------------------------------------------------------------

    def _on_stop_while_booting(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signals += 1
        raise StopRequested(signal.Signals(signum).name)

    def _on_stop_while_serving(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signals += 1
        if self.stop_signals > 1:
            log.warning(
                "already stopping; this signal is ignored so that the final sync can finish",
                extra={"signal": signal.Signals(signum).name},
            )

    # --- The whole run -----------------------------------------------------------------------------

    def run(self) -> int:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._on_stop_while_booting)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        volume = volume_lock(self.settings.database, self.holder)
        try:
            return self._run_locked(volume)
        finally:
            if self.merger is not None:
                self.merger.stop()
            self.merged_file.unlink(missing_ok=True)
            if self.keeper is not None:
                self.keeper.stop()
                self.keeper.deadline.remove()
            volume.release()
            with contextlib.suppress(FileNotFoundError):
                self.fence_file.unlink()

    def _run_locked(self, volume: FileLock) -> int:
        lease: WriterLease | None = None
        children: list[subprocess.Popen[bytes]] = []
        try:
            volume.acquire()
            replica = open_replica(self.settings.replica_url, self.environ)
            lease = writer_lease(replica, self.holder, self.settings.lease_ttl)
            try:
                taken = self._within_restore_timeout("taking the writer lease", lease.acquire)
            except LeaseHeld:
                self._deliver_stranded_rows(replica)
                raise
            log.info(f"writer lease on {self.settings.replica_url} {taken}")
            self._keep_lease(lease)
            self.read_url = generation_url(self.settings.replica_url, lease.previous_generation)
            self.write_url = generation_url(self.settings.replica_url, lease.generation)
            source = replica
            if self.read_url != self.settings.replica_url:
                source = open_replica(self.read_url, self.environ)
            placement = self._prepare_database(source)
            if self.read_url != self.write_url:
                self._start_generation(lease.generation)
            migrate(self.settings.database)
            self._check_lease("before starting Litestream")
            litestream = self._start_litestream()
            children.append(litestream)
            self._wait_for_first_sync(litestream)
            report = self._reapply_set_aside_rows(placement)
            self._start_merger(replica)
            self._check_lease("before serving")
            report = dataclasses.replace(report, generation=lease.generation)
            gunicorn = self._start_gunicorn(litestream.pid, report)
            children.append(gunicorn)
        except StopRequested as stop:
            log.warning(f"{stop} during start-up: stopping before serving")
            self._abandon(children, lease)
            return 1
        except (
            BootError,
            LeaseHeld,
            ReplicaUnavailable,
            ConfigError,
            SchemaTooNew,
            DatabaseError,
            OSError,
        ) as exc:
            log.error(f"not starting: {exc}")
            self._abandon(children, lease)
            return 1
        return self._serve(litestream, gunicorn, lease)

    def _abandon(
        self, children: list["subprocess.Popen[bytes]"], lease: WriterLease | FileLock | None
    ) -> None:
        keeper = self.keeper
        if keeper is not None:
            keeper.stop()
        held = keeper is None or (keeper.lost is None and keeper.deadline.remaining() > 0)
        for child in reversed(children):
            # Litestream's final sync only while this stack surely holds the lease.
            stop_process(child, signal.SIGTERM if held else signal.SIGKILL, _LITESTREAM_STOP_SECONDS)
        if lease is not None and held:
            release_quietly(lease)

    # --- The lease, from the moment it is taken ------------------------------------------------------

    def _keep_lease(self, lease: WriterLease) -> None:
        """Share the lease's deadline with the worker to come, and renew it from now on."""
        deadline = SharedDeadline.create(self.deadline_file, lease.deadline())
        self.keeper = LeaseKeeper(lease, self.settings.lease_ttl / 3, deadline)
        self.keeper.start()

    def _check_lease(self, step: str) -> None:
        """Go on only while the lease surely holds: wait (up to one TTL) for a renewal past its deadline."""
        keeper = self.keeper
        assert keeper is not None
        give_up = time.monotonic() + self.settings.lease_ttl
        while keeper.lost is None and keeper.deadline.remaining() <= 0:
            if time.monotonic() >= give_up:
                raise BootError(
                    f"{step}: the writer lease could not be renewed within {self.settings.lease_ttl:g} s "
                    "(WRITER_LEASE_TTL) of its deadline: another machine may take it, so this one does "
                    "not start writing"
                )
            time.sleep(_POLL_SECONDS)
        if keeper.lost is not None:
            raise BootError(f"{step}: {keeper.lost}; this stack does not start writing")

    def _within_restore_timeout(self, what: str, action: Callable[[], T]) -> T:
        """Retry ``action`` while the replica cannot be reached, up to RESTORE_TIMEOUT."""
        deadline = time.monotonic() + self.settings.restore_timeout
        while True:
            try:
                return action()
            except ReplicaUnavailable as exc:
                if not exc.transient or time.monotonic() >= deadline:
                    if exc.transient:
                        raise BootError(
                            f"{what}: REPLICA_URL ({self.settings.replica_url}) did not answer within "
                            f"{self.settings.restore_timeout:g} s (RESTORE_TIMEOUT): {exc}. Not serving "
                            "without knowing where the local database stands."
                        ) from None
                    raise BootError(
                        f"{what}: REPLICA_URL ({self.settings.replica_url}) refused: {exc}"
                    ) from None
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    # --- 3. The local database against the replica -------------------------------------------------

    def _prepare_database(self, replica: FileReplica | S3Replica) -> Placement:
        database = self.settings.database
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
            return Placement(self._restore(), "no local database")
        placement = self._within_restore_timeout("reading the replica", lambda: place(database, replica))
        figures = {"local_txid": placement.local_txid, "replica_txid": placement.replica_txid}
        if placement.standing is Standing.KEPT:
            log.info(f"keeping {database}: {placement.reason}", extra=figures)
            return placement
        aside = set_aside(database)
        self.pending.add(aside)
        log.warning(
            f"{database} is {_WHERE[placement.standing]} ({placement.reason}): set aside as {aside}; "
            "restoring the replica's latest",
            extra={**figures, "outcome": str(placement.standing), "set_aside": str(aside)},
        )
        if self._restore() is not Standing.RESTORED:
            raise BootError(f"the replica {self.settings.replica_url} had nothing to restore after all")
        return placement

    # --- Rows of machines that may not write ---------------------------------------------------------

    def _deliver_stranded_rows(self, replica: FileReplica | S3Replica) -> None:
        """Refused: another writer holds the lease. Hand this volume's rows to it through the replica."""
        try:
            deliver(self.settings.database, inbox_for(replica), self.holder.machine)
        except (ReplicaUnavailable, OSError, DatabaseError) as exc:
            log.error(
                f"could not deliver the rows of {self.settings.database} to the replica; they stay on "
                "this volume for the next start",
                extra={"reason": str(exc)},
            )

    def _start_merger(self, replica: FileReplica | S3Replica) -> None:
        """Merge what refused machines delivered: once now, then once per lease TTL while writing."""
        keeper = self.keeper
        assert keeper is not None

        def may_write() -> bool:
            return keeper.lost is None and keeper.deadline.remaining() > 0

        self.merger = Merger(
            self.settings.database, inbox_for(replica), may_write, self.merged_file, self.settings.lease_ttl
        )
        self.merger.merge_now()
        self.merger.start()

    def _restore(self) -> Standing:
        return restore_latest(self.settings, self.environ, self.read_url)

    def _start_generation(self, generation: str) -> None:
        """After a takeover: Litestream starts the new generation afresh, with a full snapshot of the
        database as placed (its state folder follows the previous generation's files)."""
        shutil.rmtree(state_dir(self.settings.database), ignore_errors=True)
        log.warning(
            f"replicating into a new generation, {self.write_url}: the previous writer did not release "
            f"the lease and may still be running; its generation {self.read_url} is left as it is",
            extra={"generation": generation},
        )

    # --- 5. Litestream ------------------------------------------------------------------------------

    def _start_litestream(self) -> "subprocess.Popen[bytes]":
        log.info("starting Litestream; gunicorn starts after its first sync")
        return spawn(
            ["litestream", "replicate", "-config", str(self.settings.litestream_config)],
            {**self.environ, "REPLICA_URL": self.write_url},
        )

    def _wait_for_first_sync(self, litestream: "subprocess.Popen[bytes]") -> None:
        """Litestream replicates a database only from its first sync on: no write is taken before."""
        deadline = time.monotonic() + self.settings.ready_timeout
        while not self._litestream_synced():
            if litestream.poll() is not None:
                raise BootError(
                    f"Litestream exited ({describe_exit(litestream.returncode)}) before its first sync"
                )
            if time.monotonic() >= deadline:
                raise BootError(
                    f"Litestream did not sync {self.settings.database} to REPLICA_URL within "
                    f"{self.settings.ready_timeout:g} s (LITESTREAM_READY_TIMEOUT): is the replica "
                    "reachable? Not serving writes that would not be replicated."
                )
            time.sleep(_POLL_SECONDS)

    def _litestream_synced(self) -> bool:
        try:
            answer = subprocess.run(
                [
                    "litestream",
                    "list",
                    "-json",
                    "-socket",
                    str(self.settings.litestream_socket),
                    "-timeout",
                    "2",
                ],
                env=self.environ,
                capture_output=True,
                timeout=5,
                check=False,
            )
            databases = json.loads(answer.stdout).get("databases") or []
        except (subprocess.TimeoutExpired, ValueError, AttributeError):
            return False
        return any(
            entry.get("path") == str(self.settings.database) and entry.get("last_sync_at")
            for entry in databases
        )

    # --- 6. Re-applying set-aside rows ---------------------------------------------------------------

    def _reapply_set_aside_rows(self, placement: Placement) -> BootReport:
        pending = self.pending.entries()
        if not pending:
            return BootReport(str(placement.standing))
        total_read = total_written = 0
        for aside in pending:
            read, written = reapply_newer_rows(self.settings.database, aside)
            self.pending.remove(aside)
            total_read, total_written = total_read + read, total_written + written
            log.warning(
                f"re-applied {written} of the {read} rows of {aside} that were newer than the replica's "
                "(newest updated_at wins); the file stays for inspection",
                extra={"rows_set_aside": read, "rows_reapplied": written, "set_aside": str(aside)},
            )
        return BootReport(str(placement.standing), str(aside), total_read, total_written)

    # --- 7. gunicorn, and serving ------------------------------------------------------------------

    def _start_gunicorn(self, litestream_pid: int, report: BootReport) -> "subprocess.Popen[bytes]":
        env = {
            **self.environ,
            contract.LITESTREAM_PID: str(litestream_pid),
            contract.WRITER_FENCE_FILE: str(self.fence_file),
            contract.WRITER_LEASE_DEADLINE_FILE: str(self.deadline_file),
            contract.SET_ASIDE_MERGED_FILE: str(self.merged_file),
            contract.BOOT_REPORT: report.to_json(),
        }
        log.info("Litestream follows the database; starting gunicorn")
        return spawn(
            ["gunicorn", "-c", str(self.settings.gunicorn_config)],
            env,
            cwd=self.settings.gunicorn_config.parent,
        )

    def _serve(
        self, litestream: "subprocess.Popen[bytes]", gunicorn: "subprocess.Popen[bytes]", lease: WriterLease
    ) -> int:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._on_stop_while_serving)
        signal.signal(signal.SIGHUP, lambda signum, frame: gunicorn.send_signal(signal.SIGHUP))
        keeper = self.keeper
        assert keeper is not None
        fenced = False
        paused = False
        try:
            while True:
                if self.stop_signals:
                    return self._stop(litestream, gunicorn, lease, fenced or paused)
                if gunicorn.poll() is not None:
                    log.error(
                        f"gunicorn exited ({describe_exit(gunicorn.returncode)}); stopping Litestream "
                        "after its final sync"
                    )
                    if fenced or paused:
                        stop_process(litestream, signal.SIGKILL, _LITESTREAM_STOP_SECONDS)
                    else:
                        stop_process(litestream, signal.SIGTERM, _LITESTREAM_STOP_SECONDS)
                        release_quietly(lease)
                    return 1
                if keeper.lost is not None and not fenced:
                    fenced = True
                    self._fence(litestream, keeper.lost)
                elif not fenced and paused != (keeper.deadline.remaining() <= 0):
                    paused = not paused
                    self._pause_uploads(litestream, paused)
                elif litestream.poll() is not None and not fenced:
                    log.error(
                        f"Litestream exited ({describe_exit(litestream.returncode)}): writes are refused "
                        "from now on; stopping gunicorn and exiting so that the platform restarts the stack"
                    )
                    # No write can succeed any more: a short drain for the reads in flight, no more.
                    stop_process(gunicorn, signal.SIGTERM, _DRAIN_WITHOUT_LITESTREAM_SECONDS)
                    release_quietly(lease)
                    return 1
                time.sleep(_POLL_SECONDS)
        finally:
            keeper.stop()

    def _pause_uploads(self, litestream: "subprocess.Popen[bytes]", pause: bool) -> None:
        # SIGSTOP holds every thread of Litestream where it is: no request leaves it until SIGCONT.
        # The worker refuses writes by itself from the same deadline.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(litestream.pid, signal.SIGSTOP if pause else signal.SIGCONT)
        if pause:
            log.error(
                "the writer lease was not renewed before its deadline: writes are refused (503) and "
                "Litestream is paused until a renewal gets through",
                extra={"lease_ttl": self.settings.lease_ttl},
            )
        else:
            log.warning("the writer lease is renewed again: Litestream resumes and writes are taken")

    def _fence(self, litestream: "subprocess.Popen[bytes]", reason: str) -> None:
        # The worker reads the reason when it sees Litestream go; SIGKILL skips the final sync, which
        # would otherwise upload this machine's writes over the other writer's history.
        contract.write_fence(self.fence_file, reason)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(litestream.pid, signal.SIGKILL)
        litestream.wait()
        log.error(
            f"{reason}: this stack stopped replicating and refuses writes (503) until it is stopped. "
            "Its writes since the other writer took over stay on this volume; the next start sets the "
            "database aside and re-applies its newer rows"
        )

    def _stop(
        self,
        litestream: "subprocess.Popen[bytes]",
        gunicorn: "subprocess.Popen[bytes]",
        lease: WriterLease,
        unsure: bool,
    ) -> int:
        log.info("stopping: gunicorn finishes the requests in flight, then Litestream makes its final sync")
        began = time.monotonic()
        served = stop_process(gunicorn, signal.SIGTERM, self.config.shutdown_timeout + 10)
        keeper = self.keeper
        if keeper is not None and (keeper.lost is not None or keeper.deadline.remaining() <= 0):
            unsure = True
        if unsure:
            # Fenced, or past the lease's deadline: no final sync may upload over another writer's
            # history. What was committed since stays on this volume for the next start to place.
            stop_process(litestream, signal.SIGKILL, _LITESTREAM_STOP_SECONDS)
            log.warning("stopped without Litestream's final sync: this stack may no longer hold the lease")
            return 1
        synced = stop_process(litestream, signal.SIGTERM, _LITESTREAM_STOP_SECONDS)
        problem = release_quietly(lease)
        if problem:
            log.warning("could not release the writer lease; it lapses by itself", extra={"reason": problem})
        log.info(
            "stopped",
            extra={"seconds": round(time.monotonic() - began, 3), "gunicorn": served, "litestream": synced},
        )
        return 0 if served == 0 and synced == 0 else 1


def main(root: Path) -> int:
    """Read every setting once (``service/settings.py``), then run; a bad setting is one JSON line."""
    configure_logging(logging.INFO)
    try:
        config = Config.from_env()
        settings = StackSettings.from_env(environment(), root)
    except ConfigError as exc:
        log.error(f"not starting: {exc}")
        return 1
    configure_logging(config.logging_level)
    # A handful of lines per start and stop, each one an operator wants to see whatever LOG_LEVEL says.
    log.setLevel(min(config.logging_level, logging.INFO))
    if settings.dropped_ca_bundle:
        log.warning(
            "ignoring AWS_CA_BUNDLE: Litestream cannot use it (put a private CA in the system trust store)"
        )
    return Supervisor(config, settings, settings.child_environment(environment())).run()
