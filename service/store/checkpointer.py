"""Checkpoints off the writer's path: a thread of their own copies the WAL into the database file.

SQLite's automatic checkpoint runs inside the COMMIT that takes the WAL past 1000 frames, on the
writer's thread, and every write queued behind it waits: under a minute of sustained PUTs that was
one COMMIT in 25, taking 12 ms at the median and up to 45 ms, under 4,700 of the 4,883 slowest
answers (``python scripts/bench.py --timeline``; docs/benchmarks.md). Here the writing connection
has its automatic checkpoint off, and ``Checkpointer`` runs ``wal_checkpoint(PASSIVE)`` on a
connection of its own when the writer reports CHECKPOINT_FRAMES frames not yet copied. A passive
checkpoint never takes the write lock and never waits for readers, so commits go on meanwhile.

The WAL file starts over from its beginning only when a write transaction begins while every frame
has been copied; under writes that never pause that moment may not come. So once the WAL holds
RESTART_FRAMES frames, the thread checkpoints without pausing, and as soon as it has copied all but
CATCH_UP_FRAMES the writer copies the rest itself before its next transaction
(``Checkpointer.restart_due``), usually nothing or a few frames, and the WAL starts over. At twice
RESTART_FRAMES the writer does so whatever is left: the WAL cannot grow without bound.

Beside Litestream none of this runs (``SqliteStore.open(..., litestream=True)``): Litestream holds a
read transaction from each of its checkpoints to the next (its db.go, ``acquireReadLock``), so no
other connection's checkpoint can copy a frame, and it checkpoints and restarts the WAL itself on its
own thresholds (litestream.yml). A thread of ours would only take the checkpoint lock that Litestream's
own checkpoint needs. docs/benchmarks.md "The stack's write tail" has the figures.
"""

import logging
import threading
import time
from pathlib import Path

import pysqlite3.dbapi2 as sqlite

from service.store.wal_index import WalIndex
from service.trace import TIMELINE

log = logging.getLogger(__name__)

# SQLite's own default for its automatic checkpoint: about 4 MB of 4 KiB pages.
CHECKPOINT_FRAMES = 1000
# Past this (32 MiB of 4 KiB pages), the writer finishes the copy so that the WAL starts over, as soon
# as no more than CATCH_UP_FRAMES are left to copy (a short checkpoint on its thread); the thread then
# runs without pausing, to get there. Past twice this, the writer copies whatever is left.
RESTART_FRAMES = 8192
CATCH_UP_FRAMES = 256
# Between two checkpoints, at least this long; after one that copied nothing, this long.
MIN_PAUSE = 0.02
IDLE_PAUSE = 0.05
# A checkpoint that keeps failing is logged at most this often (seconds).
WARNING_EVERY = 60.0
_last_warning = float("-inf")


class Checkpointer:
    """A thread that runs passive checkpoints on its own connection when ``after_commit`` wakes it."""

    def __init__(self, conn: sqlite.Connection, wal: WalIndex) -> None:
        self._conn = conn
        self._wal = wal
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpointer", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, path: Path, wal: WalIndex) -> "Checkpointer":
        conn = sqlite.connect(str(path), isolation_level=None, check_same_thread=False)
        return cls(conn, wal)

    def after_commit(self) -> None:
        """Called by the writer after each COMMIT: wake the thread if enough is left to copy."""
        frames = self._wal.frames()
        if frames is not None and frames[0] - frames[1] >= CHECKPOINT_FRAMES:
            self._wake.set()

    def restart_due(self) -> bool:
        """Whether the writer should copy the last frames itself now, so that the WAL starts over."""
        frames = self._wal.frames()
        if frames is None or frames[0] < RESTART_FRAMES:
            return False
        return frames[0] - frames[1] <= CATCH_UP_FRAMES or frames[0] >= 2 * RESTART_FRAMES

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            copied = checkpoint_passive(self._conn, self._wal, "checkpoint")
            if not copied:  # a reader holds the frames back: give it time
                time.sleep(IDLE_PAUSE)
            elif self._restart_near():
                self._wake.set()  # again at once: the writer restarts the WAL once little is left
            else:
                time.sleep(MIN_PAUSE)

    def _restart_near(self) -> bool:
        """Whether the WAL holds RESTART_FRAMES or more, so that the writer will restart it soon."""
        frames = self._wal.frames()
        return frames is not None and frames[0] >= RESTART_FRAMES


def checkpoint_passive(conn: sqlite.Connection, wal: WalIndex, event: str) -> int:
    """A passive checkpoint on ``conn``; the frames it copied (0 when it could not run)."""
    before = wal.frames()
    started = time.time()
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite.Error as exc:
        # A full disk, say: the writes meet it too and answer for it; meanwhile the WAL grows.
        global _last_warning
        if started - _last_warning >= WARNING_EVERY:
            _last_warning = started
            log.warning("checkpoint failed", extra={"reason": str(exc)})
        return 0
    after = wal.frames()
    copied = after[1] - before[1] if before is not None and after is not None and after[1] > before[1] else 0
    TIMELINE.record(event, started, time.time(), copied)
    return copied
