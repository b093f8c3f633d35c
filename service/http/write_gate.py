"""Writes are taken only while Litestream follows the database and this stack is the replica's writer.

The supervisor (``service/stack/supervisor.py``) starts Litestream and gunicorn side by side and hands the
worker Litestream's process id. The worker holds a pidfd on it, which the kernel makes readable the
moment Litestream exits, for whatever reason (the kernel's OOM killer, a crash, ``kill -9``). From then
on every write is refused with a 503, and so is readiness, so that no 204 is given for a write that
Litestream is not following; the supervisor then stops the stack so that the platform restarts it.

The supervisor also kills Litestream on purpose when the object store says that another writer took
the lease (a fence: no final sync may overwrite the other's history). It writes the reason into the
fence file first; the worker reads it and then stays up, refusing writes, until it is stopped.

The writer lease has a deadline that this machine keeps by itself (``service/lease_deadline.py``):
once it has passed without a renewal, writes are refused too, until a renewal moves it forward.
That refusal is not final, and reads go on, so readiness stays 200 and says that writes are refused
(``lease_lapsed``): with one machine, a failing check would take the reads away as well.

Without a Litestream process id (the development server, the tests) every write is taken.
"""

import logging
import os
import select
from pathlib import Path

from service.contract import read_fence
from service.lease_deadline import SharedDeadline, now

# What a write refused for the lease's deadline is told.
LEASE_LAPSED = (
    "this machine could not renew its writer lease in time (the object store did not answer), so "
    "another machine may take it over; writes resume once a renewal gets through"
)

log = logging.getLogger(__name__)


class WriteGate:
    def __init__(
        self, litestream_pid: int | None, fence_file: Path | None, lease_deadline_file: Path | None = None
    ) -> None:
        self._pid = litestream_pid
        self._fence_file = fence_file
        self._deadline_file = lease_deadline_file
        self._deadline: SharedDeadline | None = None
        self._pidfd: int | None = None
        self._poll: select.poll | None = None
        self.reason: str | None = None
        self.fenced = False
        self._lapsed = False

    def open(self) -> None:
        """Start watching Litestream and the lease's deadline; Litestream already gone: refuse writes."""
        if self._deadline_file is not None:
            self._deadline = SharedDeadline.open(self._deadline_file)
        if self._pid is None:
            return
        try:
            self._pidfd = os.pidfd_open(self._pid)
        except ProcessLookupError:
            self._trip()
            return
        self._poll = select.poll()
        self._poll.register(self._pidfd, select.POLLIN)

    @property
    def pidfd(self) -> int | None:
        return self._pidfd

    def close(self) -> None:
        if self._pidfd is not None:
            fd, self._pidfd = self._pidfd, None
            self._poll = None
            os.close(fd)
        if self._deadline is not None:
            self._deadline.close()
            self._deadline = None

    def refusal(self) -> str | None:
        """Why writes are refused now, or None: a poll(2) on the pidfd and a clock read, microseconds.

        Asked before and again after each write, so that a write committed after Litestream died, or
        after the lease's deadline passed, is answered 503 (not acknowledged) even when the event loop
        has not yet run the pidfd's callback, or when this process was frozen past the deadline and
        runs requests before any other thread notices the time.
        """
        if self.reason is None and self._poll is not None and self._poll.poll(0):
            self._trip()
        if self.reason is not None:
            return self.reason
        lapsed = self.lease_remaining() <= 0
        if lapsed != self._lapsed:
            self._lapsed = lapsed
            if lapsed:
                log.error("writes refused: the writer lease's deadline passed without a renewal")
            else:
                log.warning("writes taken again: the writer lease was renewed")
        return LEASE_LAPSED if lapsed else None

    def lease_remaining(self) -> float:
        """Seconds before the writer lease's deadline (infinite without one: no lease to keep)."""
        if self._deadline is None:
            return float("inf")
        return self._deadline.get() - now()

    @property
    def final(self) -> bool:
        """Writes are refused for good (Litestream gone, or another writer holds the lease)."""
        self.refusal()
        return self.reason is not None

    def _trip(self) -> None:
        if self.reason is not None:
            return
        fence = read_fence(self._fence_file)
        if fence:
            self.fenced = True
            self.reason = f"this machine is no longer the replica's writer ({fence})"
            log.error("writes refused: another writer holds the replica", extra={"reason": fence})
        else:
            self.reason = "replication stopped (Litestream exited); the service is restarting"
            log.error("Litestream exited: writes refused until the stack restarts")
