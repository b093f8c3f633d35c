"""A timeline of what the worker did, for finding what stalls the write path; off unless TRACE_FILE is set.

With ``TRACE_FILE`` set, the worker records, with ``time.time()`` stamps:

- ``lock``, ``write`` and ``commit``: each group commit's wait for SQLite's write lock, its inserts
  (``count`` rows) and its COMMIT, timed in the writer's thread;
- ``checkpoint``: a checkpoint the service's checkpointer thread ran, with the frames it copied
  (``count``), ``restart-checkpoint`` one the writer ran to let the WAL start over (neither runs
  beside Litestream, which checkpoints the database itself);
- ``backfill``: frames checkpointed while a COMMIT ran, read from the WAL index before and after it
  (by SQLite's automatic checkpoint inside the COMMIT where that is on; else by another connection);
- ``gc``: each garbage collection (``count`` is the generation);
- ``lag``: the event loop late by more than 2 ms for a 5 ms timer (it was busy or could not run);
- ``slow``: each request that took 10 ms or more inside the service.

The events stay in memory (a bounded deque, about 100 bytes each) and are written as JSON lines to
``TRACE_FILE`` when the worker stops. ``python scripts/bench.py --timeline`` reads them beside the load
generator's figures and Litestream's own log. Recording costs a call per event; nothing is recorded,
and nothing runs, when the variable is unset.
"""

import asyncio
import contextlib
import gc
import json
import time
from collections import deque
from pathlib import Path
from typing import Any

# Late by this much for a timer, the loop counts as stalled.
LAG_THRESHOLD = 0.002
_LAG_TICK = 0.005
# Requests that took at least this long inside the service are recorded.
SLOW_REQUEST = 0.010

Event = tuple[str, float, float, int]


class Timeline:
    """Events as (kind, start, end, count); ``record`` does nothing until ``start``."""

    def __init__(self, capacity: int = 2_000_000) -> None:
        self.enabled = False
        self._events: deque[Event] = deque(maxlen=capacity)
        self._gc_started = 0.0

    def record(self, kind: str, start: float, end: float, count: int = 0) -> None:
        if self.enabled:
            self._events.append((kind, start, end, count))

    def start(self) -> None:
        self.enabled = True
        gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        self.enabled = False
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)

    def events(self) -> list[Event]:
        return list(self._events)

    def dump(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            for kind, start, end, count in self._events:
                out.write(json.dumps({"kind": kind, "start": start, "end": end, "count": count}) + "\n")

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.time()
        else:
            self._events.append(("gc", self._gc_started, time.time(), int(info.get("generation", 0))))


TIMELINE = Timeline()


async def watch_loop_lag(timeline: Timeline) -> None:
    """Record each time a short timer fires late: the loop was busy, or its thread could not run."""
    while True:
        expected = time.time() + _LAG_TICK
        await asyncio.sleep(_LAG_TICK)
        late = time.time() - expected
        if late > LAG_THRESHOLD:
            timeline.record("lag", expected, expected + late)


def load(path: Path) -> list[Event]:
    """The events a worker wrote to ``path``."""
    events: list[Event] = []
    for line in path.read_text().splitlines():
        raw = json.loads(line)
        events.append((raw["kind"], raw["start"], raw["end"], raw["count"]))
    return events
