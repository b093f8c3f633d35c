"""Leases as ``flock`` on local files: the ``file://`` replica's writer lock, and the volume lock."""

import fcntl
import json
import math
import os
from dataclasses import asdict
from pathlib import Path

from service.stack.lease.protocol import Holder, LeaseHeld

LEASE_FILE = "writer.lock"


class FileLock:
    """An exclusive ``flock`` on ``path``, with the holder written into the file for whoever is refused."""

    def __init__(self, path: Path, holder: Holder, what: str) -> None:
        self.path = path
        self.holder = holder
        self.what = what
        self._fd: int | None = None
        # The kernel's lock cannot pass to anyone while this process lives: one generation, the root.
        self.generation = ""
        self.previous_generation = ""

    def acquire(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LeaseHeld(f"{self.what}: {self._current_holder()}") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(self.holder)).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return "taken"

    def renew(self) -> None:
        """A lock the kernel holds for this process cannot be taken away."""

    def deadline(self) -> float:
        return math.inf

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock

    def _current_holder(self) -> str:
        try:
            return Holder.from_json(json.loads(self.path.read_bytes())).describe()
        except (OSError, ValueError):
            return "another process (its details could not be read)"


def volume_lock(database: Path, holder: Holder) -> FileLock:
    lock = database.with_name(f".{database.name}.lock")
    return FileLock(lock, holder, f"another stack is running on the volume of {database}")
