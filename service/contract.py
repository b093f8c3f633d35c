"""What the supervisor (``service/stack/``) hands the worker (``service/http/``), in one place.

The supervisor starts gunicorn with these environment variables; ``service/settings.py`` reads them
into ``Config``; nobody sets them by hand:

- ``LITESTREAM_PID``: Litestream's process id. The worker holds a pidfd on it and refuses writes from
  the moment it exits (``service/http/write_gate.py``).
- ``WRITER_FENCE_FILE``: the fence protocol. When the object store says another writer holds the
  lease, the supervisor first writes the reason into this file (``write_fence``), then kills
  Litestream. The worker, woken by the pidfd, reads the file (``read_fence``): a reason means
  "fenced, refuse writes until stopped"; no file means "Litestream died".
- ``WRITER_LEASE_DEADLINE_FILE``: the lease's deadline, a 16-byte mapped file
  (``service/lease_deadline.py``): written by the supervisor after each renewal, read by the worker
  before and after each commit.
- ``SET_ASIDE_MERGED_FILE``: what the supervisor merged from machines that may not write
  (``MergeTotals`` as JSON), read by the worker for its metrics.
- ``BOOT_REPORT``: what the boot did with the local database (``BootReport`` as JSON), exposed as
  metrics.
"""

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

LITESTREAM_PID = "LITESTREAM_PID"
WRITER_FENCE_FILE = "WRITER_FENCE_FILE"
WRITER_LEASE_DEADLINE_FILE = "WRITER_LEASE_DEADLINE_FILE"
SET_ASIDE_MERGED_FILE = "SET_ASIDE_MERGED_FILE"
BOOT_REPORT = "BOOT_REPORT"
HANDED_OVER = (
    LITESTREAM_PID,
    WRITER_FENCE_FILE,
    WRITER_LEASE_DEADLINE_FILE,
    SET_ASIDE_MERGED_FILE,
    BOOT_REPORT,
)


@dataclass(frozen=True, slots=True)
class BootReport:
    """What the boot did with the local database: ``outcome`` is a ``Standing`` name (``new``,
    ``restored``, ``kept``, ``behind``, ``diverged``), then the set-aside file and its rows, and the
    replica generation the stack writes."""

    outcome: str
    set_aside: str = ""
    rows_set_aside: int = 0
    rows_reapplied: int = 0
    # The replica generation this stack writes ("" is the root: the replica's own path).
    generation: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "BootReport":
        document = json.loads(text)
        return cls(
            outcome=str(document.get("outcome", "unknown")),
            set_aside=str(document.get("set_aside", "")),
            rows_set_aside=int(document.get("rows_set_aside", 0)),
            rows_reapplied=int(document.get("rows_reapplied", 0)),
            generation=str(document.get("generation", "")),
        )


@dataclass
class MergeTotals:
    """What the writer merged since it started from machines that may not write."""

    deliveries: int = 0
    rows_read: int = 0
    rows_written: int = 0

    def write(self, path: Path) -> None:
        """Replace the file atomically: the worker may read it at any moment."""
        draft = path.with_name(path.name + ".tmp")
        draft.write_text(json.dumps(asdict(self)))
        os.replace(draft, path)

    @classmethod
    def read(cls, path: Path) -> "MergeTotals":
        try:
            document = json.loads(path.read_text())
            return cls(int(document["deliveries"]), int(document["rows_read"]), int(document["rows_written"]))
        except (OSError, ValueError, KeyError, TypeError):
            return cls()


def write_fence(path: Path, reason: str) -> None:
    """The supervisor's half: the reason, durable before Litestream is killed (the worker reads it then)."""
    draft = path.with_name(path.name + ".tmp")
    with draft.open("w") as out:
        out.write(reason)
        out.flush()
        os.fsync(out.fileno())
    os.replace(draft, path)


def read_fence(path: Path | None) -> str:
    """The worker's half: the reason, or "" when there is none (Litestream died on its own)."""
    if path is None:
        return ""
    try:
        return path.read_text().strip()
    except OSError:
        return ""
