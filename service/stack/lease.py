"""One writer per replica path, and one stack per volume.

Litestream 0.5 does not coordinate writers: two stacks replicating to one path interleave their
histories and the replica can become unrestorable. So the supervisor holds a lease on the replica
path for as long as it runs, and refuses to start while another live writer holds it.

- ``s3://`` replicas: an object ``<path>/writer-lease.json`` written with conditional requests. It is
  created with ``If-None-Match: *`` and renewed or taken over with ``If-Match: <etag>``, so two
  writers can never both believe they hold it. It lapses ``ttl`` seconds after its last renewal, by
  the object store's clock (the object's Last-Modified against the answer's Date), so the writers'
  clocks do not matter. A graceful stop marks it released: the next writer takes it at once. The
  same machine starting again on the same database takes it over at once too (a crash, or the
  platform restarting it); the volume lock below guarantees that the old stack is gone by then.
- The holder keeps a deadline by itself (``service/lease_deadline.py``): the moment its last
  successful write of the lease was *sent*, plus the TTL, less a margin. Past it, the stack stops
  acknowledging writes and uploading, whether or not the store answers, so a machine cut off from
  the store (or frozen) never writes beside the one that took the lease after it lapsed.
- Fencing in the store: a generation per holder. The lease names the replica path its holder
  writes to (``generation``, with the history of earlier ones and when each began). A holder that
  takes the lease over from one that did not release it (lapsed) starts a new generation: it places
  its database against the previous one (restoring from it), then replicates into
  ``<path>/generations/<name>``. So a writer that lost the lease without knowing it, frozen past any
  deadline or with a request held in the network, can only ever write into its own old generation,
  which nobody follows any more: it cannot overwrite or interleave with the current writer's files.
  A release (a graceful stop, after Litestream's final sync) and this machine's own restart keep the
  generation. Restores, the backup check and PITR follow the lease (``current_replica_url``).
- ``file://`` replicas: an exclusive ``flock`` on ``<path>/writer.lock``, which the kernel releases
  when the holder dies; the file says who holds it.
- The volume: an exclusive ``flock`` on ``.<db>.lock`` beside the database, held for the stack's
  life, so that two stacks (or two restores) never run on one volume at once.
"""

import contextlib
import fcntl
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

from service import lease_deadline
from service.lease_deadline import SharedDeadline
from service.settings import machine_identity
from service.stack.replica import (
    FileReplica,
    ReplicaUnavailable,
    S3Replica,
    generation_at,
    generation_url,
    open_replica,
)

log = logging.getLogger("service.stack.supervisor")

LEASE_OBJECT = "writer-lease.json"
LEASE_FILE = "writer.lock"
# What S3 answers a conditional write whose condition failed (412), or an If-Match on an object that
# is gone (404). AWS answers 409 ConditionalRequestConflict to a conditional write that raced another:
# the same "someone else wrote", and the caller reads again before it writes again.
_CONDITION_FAILED = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"})


class LeaseHeld(RuntimeError):
    """Another live writer holds the replica path (or another stack the volume)."""


class LeaseLost(RuntimeError):
    """While serving, the object store said that another writer now holds the replica path."""


def _now() -> str:
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
        return cls(machine_identity(environ), str(database), os.getpid(), uuid.uuid4().hex, _now())

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


# --- Locks on local files -------------------------------------------------------------------------------


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


# --- The lease object in an S3 replica --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Seen:
    holder: Holder
    released: bool
    ttl: float
    age: float
    etag: str
    generation: str
    history: list[dict[str, str]]


_HISTORY_KEPT = 100  # generations remembered in the lease (for point-in-time restores)


def _new_generation(holder: Holder) -> str:
    """Sortable by when it began, unique by the holder's run."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{holder.instance[:8]}"


class S3Lease:
    """The lease as an object in the replica's path, changed only by conditional writes."""

    def __init__(self, replica: S3Replica, holder: Holder, ttl: float) -> None:
        self.replica = replica
        self.holder = holder
        self.ttl = ttl
        self.key = replica.key(LEASE_OBJECT)
        self._etag: str | None = None
        # When the last successful write of the lease was sent, on the lease's clock.
        self._sent_at = -math.inf
        self.generation = ""
        self.previous_generation = ""
        self._history: list[dict[str, str]] = []

    def acquire(self) -> str:
        for _ in range(3):  # another writer may win a race between the read and the write
            seen = self._read()
            if seen is None:
                # The root generation: a replica made before the lease existed goes on as it is.
                self.generation = self.previous_generation = ""
                self._history = [{"generation": "", "since": _now()}]
                if self._write(if_none_match=True):
                    return "taken (no lease before)"
                continue
            self.generation = self.previous_generation = seen.generation
            self._history = seen.history or [{"generation": seen.generation, "since": seen.holder.since}]
            if seen.holder.instance == self.holder.instance:
                # Our own write, whose answer was lost: write again, so that the deadline counts
                # from a write whose sending time is known.
                if self._write(if_match=seen.etag):
                    return "taken"
                continue
            if seen.released:
                how = f"taken over from {seen.holder.describe()}, which released it"
            elif self.holder.same_place(seen.holder):
                how = f"taken over from this machine's previous run ({seen.holder.describe()})"
            elif seen.age > seen.ttl:
                # The lapsed holder may still be running: it keeps its generation, this one starts anew.
                self.generation = _new_generation(self.holder)
                self._history = [*self._history, {"generation": self.generation, "since": _now()}]
                self._history = self._history[-_HISTORY_KEPT:]
                how = (
                    f"taken over from {seen.holder.describe()}, which lapsed {seen.age - seen.ttl:.0f} s "
                    f"ago; writing generation {self.generation}"
                )
            else:
                raise LeaseHeld(
                    f"another writer holds {self.replica.url}: {seen.holder.describe()}, last renewed "
                    f"{seen.age:.0f} s ago (the lease lapses {seen.ttl:.0f} s after its last renewal). "
                    "One writer per replica path: stop the other stack, or give this one its own "
                    "REPLICA_URL"
                )
            if self._write(if_match=seen.etag):
                return how
        raise LeaseHeld(f"another writer keeps taking the lease on {self.replica.url}")

    def renew(self) -> None:
        if self._etag is None:
            raise LeaseLost("the lease was never taken")
        if self._write(if_match=self._etag):
            return
        # The condition failed: another writer wrote, or our own last write went through but its
        # answer was lost (the store has a newer ETag of ours), or a concurrent write raced (409).
        # Read again; only a fresh write of our own renews. The current ETag is never adopted
        # without writing: the deadline must count from a write whose sending time is known.
        for _ in range(3):
            seen = self._read()
            if seen is None:
                # Someone deleted the object: take it again, unless another writer does first.
                if self._write(if_none_match=True):
                    return
                continue
            if seen.holder.instance != self.holder.instance or seen.released:
                raise LeaseLost(f"the lease on {self.replica.url} is now held by {seen.holder.describe()}")
            if self._write(if_match=seen.etag):
                return
        raise LeaseLost(f"the lease on {self.replica.url} keeps changing under this writer")

    def deadline(self) -> float:
        return lease_deadline.deadline_after(self._sent_at, self.ttl)

    def release(self) -> None:
        if self._etag is not None:
            self._write(if_match=self._etag, released=True)
            self._etag = None
            self._sent_at = -math.inf

    def _read(self) -> _Seen | None:
        try:
            answer = self.replica.call("get_object", Bucket=self.replica.location.bucket, Key=self.key)
            body = answer["Body"].read()
        except ReplicaUnavailable as exc:
            if exc.code == "NoSuchKey":  # not NoSuchBucket, also a 404: that one is a refusal
                return None
            raise
        try:
            document = json.loads(body)
        except ValueError:
            document = {}
        # Both times come from the object store, so the machines' clocks do not matter. A store that
        # sends no Date header gets this machine's clock instead: never an age of 0 that would make
        # a lease look fresh forever.
        server_now = answer["ResponseMetadata"]["HTTPHeaders"].get("date")
        try:
            now = parsedate_to_datetime(server_now) if server_now else datetime.now(UTC)
        except (TypeError, ValueError):
            now = datetime.now(UTC)
        age = (now - answer["LastModified"]).total_seconds()
        history = document.get("history")
        return _Seen(
            holder=Holder.from_json(document.get("holder")),
            released=bool(document.get("released")),
            ttl=float(document.get("ttl_seconds") or self.ttl),
            age=age,
            etag=answer["ETag"],
            generation=str(document.get("generation") or ""),
            history=[dict(entry) for entry in history if isinstance(entry, dict)]
            if isinstance(history, list)
            else [],
        )

    def _write(
        self, *, if_match: str | None = None, if_none_match: bool = False, released: bool = False
    ) -> bool:
        """A conditional PUT; False when the condition failed (someone else wrote first)."""
        document = {
            "holder": asdict(self.holder),
            "ttl_seconds": self.ttl,
            "released": released,
            "written_at": _now(),
            "generation": self.generation,
            "history": self._history,
        }
        condition = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"} if if_none_match else {}
        sent_at = lease_deadline.now()
        try:
            answer = self.replica.call(
                "put_object",
                Bucket=self.replica.location.bucket,
                Key=self.key,
                Body=json.dumps(document).encode(),
                ContentType="application/json",
                **condition,
            )
        except ReplicaUnavailable as exc:
            if exc.status in {409, 412} or exc.code in _CONDITION_FAILED:
                return False
            raise
        self._etag = answer["ETag"]
        self._sent_at = sent_at
        return True


# --- Keeping it -----------------------------------------------------------------------------------------


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


def writer_lease(replica: FileReplica | S3Replica, holder: Holder, ttl: float) -> WriterLease:
    if isinstance(replica, S3Replica):
        return S3Lease(replica, holder, ttl)
    return FileLock(replica.root / LEASE_FILE, holder, f"another writer holds {replica.url}")


def release_quietly(lease: WriterLease | FileLock) -> str | None:
    """Release, and say why not if it failed (an unreachable store): the lease then lapses by itself."""
    with contextlib.suppress(LeaseLost):
        try:
            lease.release()
        except ReplicaUnavailable as exc:
            return str(exc)
    return None


def read_lease_document(replica: S3Replica) -> dict[str, Any] | None:
    """The lease object as JSON, or None when there is none (a replica older than the lease)."""
    try:
        answer = replica.call("get_object", Bucket=replica.location.bucket, Key=replica.key(LEASE_OBJECT))
    except ReplicaUnavailable as exc:
        if exc.code == "NoSuchKey":
            return None
        raise
    try:
        document = json.loads(answer["Body"].read())
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def current_replica_url(replica_url: str, environ: Mapping[str, str], at: datetime | None = None) -> str:
    """Where the replica's data is: the generation the lease names (or the one written at ``at``)."""
    replica = open_replica(replica_url, environ)
    if not isinstance(replica, S3Replica):
        return replica_url
    document = read_lease_document(replica) or {}
    history = document.get("history")
    if at is None or not isinstance(history, list):
        generation = str(document.get("generation") or "")
    else:
        generation = generation_at([entry for entry in history if isinstance(entry, dict)], at)
    return generation_url(replica_url, generation)
