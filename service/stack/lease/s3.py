"""The lease as an object in an S3 replica, changed only by conditional writes; the generations it names."""

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from service import lease_deadline
from service.stack.lease.protocol import Holder, LeaseHeld, LeaseLost, now
from service.stack.replica import ReplicaUnavailable, S3Replica, generation_at, generation_url, open_replica

log = logging.getLogger("service.stack.supervisor")

LEASE_OBJECT = "writer-lease.json"
# What S3 answers a conditional write whose condition failed (412), or an If-Match on an object that
# is gone (404). AWS answers 409 ConditionalRequestConflict to a conditional write that raced another:
# the same "someone else wrote", and the caller reads again before it writes again.
_CONDITION_FAILED = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"})


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
                self._history = [{"generation": "", "since": now()}]
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
                self._history = [*self._history, {"generation": self.generation, "since": now()}]
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
            "written_at": now(),
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
