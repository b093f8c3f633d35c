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

from service.stack.lease.file import LEASE_FILE, FileLock, volume_lock
from service.stack.lease.keeper import LeaseKeeper
from service.stack.lease.protocol import Holder, LeaseHeld, LeaseLost, WriterLease, release_quietly
from service.stack.lease.s3 import LEASE_OBJECT, S3Lease, current_replica_url, read_lease_document
from service.stack.replica import FileReplica, S3Replica

__all__ = [
    "LEASE_FILE",
    "LEASE_OBJECT",
    "FileLock",
    "Holder",
    "LeaseHeld",
    "LeaseKeeper",
    "LeaseLost",
    "S3Lease",
    "WriterLease",
    "current_replica_url",
    "read_lease_document",
    "release_quietly",
    "volume_lock",
    "writer_lease",
]


def writer_lease(replica: FileReplica | S3Replica, holder: Holder, ttl: float) -> WriterLease:
    if isinstance(replica, S3Replica):
        return S3Lease(replica, holder, ttl)
    return FileLock(replica.root / LEASE_FILE, holder, f"another writer holds {replica.url}")
