"""What every writer lease is (``WriterLease``), who holds one (``Holder``), and how taking or keeping
one fails."""

import contextlib
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from service.settings import machine_identity
from service.stack.replica import ReplicaUnavailable


class LeaseHeld(RuntimeError):
    """Another live writer holds the replica path (or another stack the volume)."""


class LeaseLost(RuntimeError):
    """While serving, the object store said that another writer now holds the replica path."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lease: the machine, the database it writes, and this run of the stack."""

    machine: str
    database: str
    pid: int
    instance: str
    since: str

    @classmethod
    def me(cls, database: Path, environ: Mapping[str, str]) -> "Holder":
        return cls(machine_identity(environ), str(database), os.getpid(), uuid.uuid4().hex, now())

    @classmethod
    def from_json(cls, document: Any) -> "Holder":
        try:
            return cls(
                machine=str(document["machine"]),
                database=str(document["database"]),
                pid=int(document["pid"]),
                instance=str(document["instance"]),
                since=str(document["since"]),
            )
        except (KeyError, TypeError, ValueError):
            return cls("unknown", "unknown", 0, "unknown", "unknown")

    def same_place(self, other: "Holder") -> bool:
        return (self.machine, self.database) == (other.machine, other.database)

    def describe(self) -> str:
        return f"machine {self.machine} (database {self.database}, pid {self.pid}) since {self.since}"


class WriterLease(Protocol):
    holder: Holder
    # The generation this holder writes to, and the one its data comes from (differs after a takeover).
    generation: str
    previous_generation: str

    def acquire(self) -> str:
        """Take the lease or raise ``LeaseHeld``; returns how it was taken, for the log."""
        ...

    def renew(self) -> None:
        """Raise ``LeaseLost`` if another writer holds it now, ``ReplicaUnavailable`` if unreachable."""
        ...

    def deadline(self) -> float:
        """Until when (``lease_deadline.now()``) this holder is sure nobody else can take the lease."""
        ...

    def release(self) -> None: ...


def release_quietly(lease: WriterLease) -> str | None:
    """Release, and say why not if it failed (an unreachable store): the lease then lapses by itself."""
    with contextlib.suppress(LeaseLost):
        try:
            lease.release()
        except ReplicaUnavailable as exc:
            return str(exc)
    return None
