"""Writes are taken only while Litestream follows the database and this stack is the replica's writer.

The supervisor (``service/supervisor.py``) starts Litestream and gunicorn side by side and hands the
worker Litestream's process id. The worker holds a pidfd on it, which the kernel makes readable the
moment Litestream exits, for whatever reason (the kernel's OOM killer, a crash, ``kill -9``). From then
on every write is refused with a 503, and so is readiness, so that no 204 is given for a write that
Litestream is not following; the supervisor then stops the stack so that the platform restarts it.

The supervisor also kills Litestream on purpose when the object store says that another writer took
the lease (a fence: no final sync may overwrite the other's history). It writes the reason into the
fence file first; the worker reads it and then stays up, refusing writes, until it is stopped.

Without a Litestream process id (the development server, the tests) every write is taken.
"""

import logging
import os
import select
from pathlib import Path

log = logging.getLogger(__name__)


class WriteGuard:
    def __init__(self, litestream_pid: int | None, fence_file: Path | None) -> None:
        self._pid = litestream_pid
        self._fence_file = fence_file
        self._pidfd: int | None = None
        self._poll: select.poll | None = None
        self.reason: str | None = None
        self.fenced = False

    def open(self) -> None:
        """Start watching Litestream; if it is already gone, refuse writes from the start."""
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

    def refusal(self) -> str | None:
        """Why writes are refused now, or None. One poll(2) on the pidfd, a microsecond or two.

        Asked before and again after each write, so that a write committed after Litestream died is
        answered 503 (not acknowledged) even when the event loop has not yet run the pidfd's callback.
        """
        if self.reason is None and self._poll is not None and self._poll.poll(0):
            self._trip()
        return self.reason

    def _trip(self) -> None:
        if self.reason is not None:
            return
        fence = self._read_fence()
        if fence:
            self.fenced = True
            self.reason = f"this machine is no longer the replica's writer ({fence})"
            log.error("writes refused: another writer holds the replica", extra={"reason": fence})
        else:
            self.reason = "replication stopped (Litestream exited); the service is restarting"
            log.error("Litestream exited: writes refused until the stack restarts")

    def _read_fence(self) -> str:
        if self._fence_file is None:
            return ""
        try:
            return self._fence_file.read_text().strip()
        except OSError:
            return ""
