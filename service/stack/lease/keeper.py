"""Keeping the writer lease: a thread that renews it and moves the shared deadline forward."""

import logging
import threading
import time

from service.lease_deadline import SharedDeadline
from service.stack.lease.protocol import LeaseLost, WriterLease
from service.stack.replica import ReplicaUnavailable

log = logging.getLogger("service.stack.supervisor")


class LeaseKeeper(threading.Thread):
    """Renews the writer lease every third of its lifetime and moves the shared deadline forward.

    A renewal that does not get through is tried again every second: the deadline, not this
    thread, decides when writes stop. When the store says another writer holds the lease, ``lost``
    says so and the thread ends.
    """

    def __init__(self, lease: WriterLease, interval: float, deadline: SharedDeadline) -> None:
        super().__init__(name="lease-keeper", daemon=True)
        self.lease = lease
        self.interval = interval
        self.deadline = deadline
        self.lost: str | None = None
        self._stopping = threading.Event()

    def run(self) -> None:
        unreachable_since: float | None = None
        wait = self.interval
        while not self._stopping.wait(wait):
            try:
                self.lease.renew()
            except LeaseLost as exc:
                self.lost = str(exc)
                return
            except ReplicaUnavailable as exc:
                if unreachable_since is None:
                    unreachable_since = time.monotonic()
                    log.warning(
                        "could not renew the writer lease; writes go on until its deadline",
                        extra={"reason": str(exc), "seconds_left": round(self.deadline.remaining(), 1)},
                    )
                wait = min(1.0, self.interval)
                continue
            self.deadline.set(self.lease.deadline())
            wait = self.interval
            if unreachable_since is not None:
                log.info(
                    "writer lease renewed again",
                    extra={"unreachable_seconds": round(time.monotonic() - unreachable_since, 1)},
                )
                unreachable_since = None

    def stop(self) -> None:
        """Stop renewing, and wait for a renewal under way (bounded by the store client's timeouts)."""
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=15)
