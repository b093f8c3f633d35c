"""The writer lease's deadline: the moment before which this machine is sure it still holds the lease.

The supervisor's lease keeper moves it forward after every successful renewal; the worker refuses to
acknowledge a write once it has passed, and the supervisor pauses Litestream's uploads. The holder
keeps the deadline by itself, whether or not the object store answers (leases as Gray and Cheriton
defined them): it is measured from the moment the last successful renewal was *sent*, so a slow or
lost answer only makes it earlier, never later.

Time is ``CLOCK_BOOTTIME``: it counts time spent suspended or frozen, so a machine resumed after a
pause sees at once that its deadline has passed (``CLOCK_MONOTONIC`` stops while suspended). The
clock is the kernel's, so the supervisor and the worker read the same one.

The two processes share the deadline through a 16-byte file mapped into both (a sequence number and
the deadline in nanoseconds, written under a sequence lock): reading it costs the worker a memory
read and a clock call, cheap enough to do before and after every commit.
"""

import math
import mmap
import os
import struct
import time
from pathlib import Path

CLOCK = time.CLOCK_BOOTTIME
# Two native 8-byte fields, each written on its own: a sequence number (odd while the deadline is
# being written) at 0, the deadline in nanoseconds at 8.
_SEQUENCE = struct.Struct("@Q")
_VALUE = struct.Struct("@q")
_SIZE = 16
_NEVER = -1  # stored for "no deadline" (a lease the kernel holds: a file lock)


def now() -> float:
    """Seconds on the lease's clock (CLOCK_BOOTTIME)."""
    return time.clock_gettime(CLOCK)


def lease_margin(ttl: float) -> float:
    """How long before the lease can lapse the holder stops writing: 1 s plus a fifth of the TTL.

    It covers the object store's clock being read in whole seconds (the lease's age is Date minus
    Last-Modified, both HTTP dates, so another machine can see it lapse up to 1 s early), the drift
    between this machine's clock and the store's over one TTL, and a commit that is under way when
    the deadline passes. At the default TTL of 30 s: 7 s, so writes stop 23 s after the last renewal
    was sent; renewals every 10 s leave an outage of at least 13 s that fails no write.
    """
    return 1.0 + ttl / 5.0


def deadline_after(sent: float, ttl: float) -> float:
    """The deadline that a renewal sent at ``sent`` (on the lease's clock) gives."""
    return sent + ttl - lease_margin(ttl)


class SharedDeadline:
    """The deadline in a small file mapped into memory: one process writes it, others read it."""

    def __init__(self, path: Path, writable: bool) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY
        fd = os.open(path, flags, 0o644)
        try:
            if writable:
                os.ftruncate(fd, _SIZE)
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            self._map = mmap.mmap(fd, _SIZE, access=access)
        finally:
            os.close(fd)
        self._sequence = 0

    @classmethod
    def create(cls, path: Path, deadline: float) -> "SharedDeadline":
        """The writer's side (the supervisor); starts at ``deadline``."""
        shared = cls(path, writable=True)
        shared.set(deadline)
        return shared

    @classmethod
    def open(cls, path: Path) -> "SharedDeadline":
        """A reader's side (the worker)."""
        return cls(path, writable=False)

    def set(self, deadline: float) -> None:
        value = _NEVER if math.isinf(deadline) else round(deadline * 1e9)
        self._sequence += 1
        _SEQUENCE.pack_into(self._map, 0, self._sequence * 2 - 1)  # odd: a write is under way
        _VALUE.pack_into(self._map, 8, value)
        _SEQUENCE.pack_into(self._map, 0, self._sequence * 2)

    def get(self) -> float:
        """The deadline; a read that overlapped a write is read again (a sequence lock)."""
        while True:
            (before,) = _SEQUENCE.unpack_from(self._map, 0)
            (value,) = _VALUE.unpack_from(self._map, 8)
            (after,) = _SEQUENCE.unpack_from(self._map, 0)
            if before == after and before % 2 == 0:
                return math.inf if value == _NEVER else value / 1e9

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once it has passed)."""
        return self.get() - now()

    def close(self) -> None:
        self._map.close()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
