"""The timeline of the stalls: sustained PUTs with the worker's timeline on (``TRACE_FILE``), read beside
Litestream's checkpoints, and what the slowest requests overlapped."""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from scripts.benchmark.report import LABELS, markdown_table, say
from scripts.benchmark.runner import Bench
from scripts.benchmark.scenarios import Scenario
from scripts.benchmark.servers import HOST, free_port
from scripts.benchmark.sustained import FileWatcher
from scripts.benchmark.wrk import Load, run_wrk

# A timeline event as service/trace.py writes it: (kind, start, end, count).
Event = tuple[str, float, float, int]

# Litestream's own checkpoints, from its JSON log at DEBUG:
# {"time": ..., "level": "DEBUG", "msg": "checkpoint", ..., "mode": "PASSIVE", "result": "a,b,c"}
_LITESTREAM_CHECKPOINT = re.compile(r'^\{.*"msg":\s*"checkpoint"', re.MULTILINE)
_STALL = 0.005  # events at least this long are shown as stalls


def litestream_checkpoints(log: Path) -> list[Event]:
    """Litestream's checkpoints from its log: (kind, time, time, frames in the WAL then)."""
    found: list[Event] = []
    for line in log.read_text(errors="replace").splitlines():
        if not _LITESTREAM_CHECKPOINT.match(line):
            continue
        try:
            entry = json.loads(line)
            _, frames, _ = (int(part) for part in str(entry["result"]).split(","))
            when = datetime.fromisoformat(str(entry["time"])).timestamp()  # nanoseconds: truncated
        except (ValueError, KeyError):
            continue
        found.append((f"litestream-{str(entry.get('mode', '')).lower()}", when, when, frames))
    return found


def describe_timeline(title: str, load: Load, events: Sequence[Event]) -> str:
    """What the worker did: each kind's durations, what the slowest requests overlapped, the worst second."""
    by_kind: dict[str, list[Event]] = {}
    for event in events:
        by_kind.setdefault(event[0], []).append(event)
    header = ("event", "count", "p50 ms", "p99 ms", "max ms", "total s", "rows or frames")
    rows: list[tuple[str, ...]] = []
    for kind in sorted(by_kind):
        spans = sorted((end - start) * 1000 for _, start, end, _ in by_kind[kind])
        # For requests the count is the status: no sum to show.
        counts = "" if kind == "slow" else f"{sum(count for *_, count in by_kind[kind]):,}"
        rows.append(
            (
                kind,
                f"{len(spans):,}",
                f"{percentile(spans, 50):.2f}",
                f"{percentile(spans, 99):.2f}",
                f"{spans[-1]:.2f}",
                f"{sum(spans) / 1000:.2f}",
                counts,
            )
        )
    lines = [
        f"### {title}",
        "",
        f"wrk: {load.rps:,.0f} req/s, p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms, "
        f"p99.9 {load.p999_ms:.1f} ms, max {load.max_ms:.1f} ms, {load.errors} errors.",
        "",
        *markdown_table(header, rows, left=1),
    ]
    slow = sorted(by_kind.get("slow", []), key=lambda e: e[1] - e[2])[
        : max(1, len(by_kind.get("slow", [])) // 10)
    ]
    causes: dict[str, int] = {}
    stalls = [e for e in events if e[0] not in ("slow", "write") and e[2] - e[1] >= _STALL]
    for _, start, end, _ in slow:
        overlapping = [e for e in stalls if e[1] < end and e[2] > start]
        cause = (
            max(overlapping, key=lambda e: min(e[2], end) - max(e[1], start))[0] if overlapping else "none"
        )
        causes[cause] = causes.get(cause, 0) + 1
    lines += [
        "",
        f"The slowest tenth of the requests that took 10 ms or more ({len(slow):,}), by the stall of "
        f"{_STALL * 1000:.0f} ms or more that overlapped each most: "
        + ", ".join(f"{kind} {n:,}" for kind, n in sorted(causes.items(), key=lambda kv: -kv[1]))
        + ".",
    ]
    if slow:
        worst = slow[0]
        window = [
            e
            for e in events
            if e[2] >= worst[1] - 0.2
            and e[1] <= worst[2] + 0.05
            and e[0] != "slow"
            and (e[2] - e[1] >= 0.002 or e[0].startswith("litestream") or e[0] in ("backfill", "checkpoint"))
        ]
        lines += [
            "",
            f"Around the slowest request ({(worst[2] - worst[1]) * 1000:.0f} ms), ms from its start:",
            "",
        ]
        lines += ["```"]
        for kind, start, end, count in sorted(window, key=lambda e: e[1])[:40]:
            lines.append(
                f"{(start - worst[1]) * 1000:9.1f} {(end - worst[1]) * 1000:9.1f}  {kind:<20} {count}"
            )
        lines += ["```"]
    return "\n".join(lines)


def litestream_checkpoint_figures(address: str) -> tuple[float, float] | None:
    """Litestream's passive checkpoints so far: (count, seconds in all), from its metrics."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except OSError:
        return None
    finally:
        conn.close()
    figures = {"count": 0.0, "seconds": 0.0}
    for line in text.splitlines():
        match = re.match(r'litestream_checkpoint_(count|seconds)\{[^}]*mode="PASSIVE"[^}]*\} (\S+)', line)
        if match:
            figures[match.group(1)] += float(match.group(2))
    return figures["count"], figures["seconds"]


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * pct / 100))]


def run_timeline(bench: Bench, users: int, seconds: float, servers: Sequence[str]) -> str:
    """Sustained PUTs with the worker's timeline on (TRACE_FILE), on each of ``servers`` ("service": the
    server alone, "stack": with Litestream)."""
    from service.trace import load as load_events

    parts = []
    for server in servers:
        scenario = Scenario("PUT, sustained, traced", server, "put", users)
        name = bench.name("timeline", server)
        trace = bench.workdir / name / "trace.jsonl"
        litestream = f"{HOST}:{free_port()}"
        extra = {"TRACE_FILE": str(trace), "LOG_LEVEL": "DEBUG", "LITESTREAM_METRICS_ADDR": litestream}
        with bench.server(scenario, name, extra) as server_process:
            script = bench.script("put", users)
            run_wrk(server_process.port, script, 2.0)
            measured_from = time.time()
            before = litestream_checkpoint_figures(litestream) if server == "stack" else None
            with FileWatcher(bench.database(name).with_name("hello.db-wal")) as wal:
                load = run_wrk(server_process.port, script, seconds)
            after = litestream_checkpoint_figures(litestream) if server == "stack" else None
        events = load_events(trace) + litestream_checkpoints(bench.workdir / f"{name}.log")
        events = [event for event in events if event[2] >= measured_from]
        text = describe_timeline(f"{LABELS[server]}, {seconds:g} s of PUTs", load, events)
        waited = sum(end - start for kind, start, end, _ in events if kind == "lock")
        text += (
            f"\n\nThe writer waited for SQLite's write lock {waited:.2f} s in all "
            f"({waited / seconds:.1%} of the load); the WAL file reached {wal.largest / 1e6:.1f} MB."
        )
        if before is not None and after is not None and after[0] > before[0]:
            count, total = after[0] - before[0], after[1] - before[1]
            text += (
                f"\n\nLitestream's own metrics over the load: {count:.0f} passive checkpoints, "
                f"{total * 1000 / count:.1f} ms each on average (litestream_checkpoint_seconds), held "
                "under its write lock."
            )
        parts.append(text)
        say(parts[-1])
    return "\n\n".join(parts)
