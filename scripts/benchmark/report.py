"""What the bench prints: progress on standard error, the Markdown tables, and the plot."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from scripts.benchmark.paced import CONNECTIONS as PACED_CONNECTIONS
from scripts.benchmark.paced import LAG_LIMIT_MS
from scripts.benchmark.pricing import OPERATIONS, PRICE_LISTS, SECONDS_PER_MONTH
from scripts.benchmark.results import OpenLoopRow, Results, Row, SustainedRow, Traffic
from scripts.benchmark.wrk import CONNECTIONS

LABELS = {
    "reference": "bare aiohttp",
    "service": "service",
    "reference-asyncio": "bare aiohttp, asyncio loop",
    "service-asyncio": "service, asyncio loop",
    "service-before": "service, before",
    "postgres": "service on PostgreSQL",
    "stack": "service + Litestream",
    "stack-before": "service + Litestream, before",
}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 2) -> list[str]:
    """The lines of a Markdown table: its first ``left`` columns aligned left, the others right."""
    align = ["---"] * left + ["---:"] * (len(header) - left)
    return ["| " + " | ".join(cells) + " |" for cells in (header, align, *rows)]


# The columns both tables begin with.
_FIRST = ("scenario", "server", "req/s", "p50 ms", "p99 ms")


def _first(r: Row | SustainedRow) -> tuple[str, ...]:
    return (r.scenario, LABELS[r.server], f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}")


def table(results: Results) -> str:
    header = (*_FIRST, "errors", "peak RSS MB", "CPU µs/req", "DB CPU µs/req", "ready s", "ratio",
              "CPU ratio", "wrk's core")  # fmt: skip
    rows = (
        (*_first(r), f"{r.errors}", f"{r.peak_rss_mb:.1f}", f"{r.cpu_us:.0f}",
         f"{r.db_cpu_us:.0f}" if r.server == "postgres" else "", f"{r.ready_s:.2f}",
         f"{r.ratio:.0%}" if r.ratio is not None else "",
         f"{r.cpu_ratio:.0%}" if r.cpu_ratio is not None else "", f"{r.client_busy:.0%}")
        for r in results.rows
    )  # fmt: skip
    notes = [
        f"Medians of {results.rounds} rounds of {results.duration_s:g} s each. Ratio: req/s as a share of "
        "the bare aiohttp app in the same scenario; for the largest GET, of the service's GET at the "
        "smallest scale. CPU ratio: the same share by CPU time per request (the baseline's µs/req over "
        "this row's), which a neighbour taking part of the server's core moves far less. wrk's core: the "
        "most of it wrk used in a round (above 90% its own limit, not the server's, would set req/s)."
    ]
    if results.restore_s is not None:
        notes.append(
            f"Litestream restore of the {results.restore_users:,}-user database from a local S3 server: "
            f"{results.restore_s:.2f} s."
        )
    elif results.restore_note:
        notes.append(f"Litestream restore: {results.restore_note}.")
    return "\n".join([*markdown_table(header, rows), "", *notes])


def sustained_table(results: Results) -> str:
    header = (*_FIRST, "p99.9 ms", "max ms", "errors", "WAL max MB", "RSS start MB", "RSS end MB")
    rows = (
        (*_first(r), f"{r.p999_ms:.2f}", f"{r.max_ms:.2f}", f"{r.errors}", f"{r.wal_max_mb:.1f}",
         f"{r.rss_start_mb:.1f}", f"{r.rss_end_mb:.1f}")
        for r in results.sustained
    )  # fmt: skip
    note = (
        f"One run of {results.sustained_s:g} s each after a 2 s warm-up, {CONNECTIONS} connections. WAL max: "
        "the largest size of hello.db-wal, sampled every 50 ms. RSS: the worker's resident set after the "
        "warm-up and at the end of the load."
    )
    return "\n".join([*markdown_table(header, rows), "", note])


def _per_sync(traffic: Traffic) -> str:
    return f"{traffic.puts_per_sync:.1f}" if traffic.puts_per_sync is not None else ""


def _syncs(traffic: Traffic) -> str:
    return f"{traffic.syncs_per_s:.1f}" if traffic.puts_per_sync is not None else ""


def _db_sync(traffic: Traffic) -> str:
    return f"{traffic.db_sync_ms:.1f}" if traffic.db_sync_ms is not None else ""


def durability_table(results: Results) -> str:
    """wrk's PUTs on the whole stack, per DURABILITY and round trip to the store."""
    header = (
        "DURABILITY", "store", "PUT 2xx/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "non-2xx",
        "socket errors", "Litestream PUT/s", "store req/s", "syncs/s", "PUTs per sync", "WAL to LTX ms",
    )  # fmt: skip
    rows = (
        (r.mode, r.network, f"{r.ok_rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.p999_ms:.2f}",
         f"{r.max_ms:.2f}", f"{r.non2xx:,}", f"{r.socket_errors:,}", f"{r.traffic.litestream_puts_per_s:.1f}",
         f"{sum(r.traffic.store_rps.values()):.1f}", _syncs(r.traffic), _per_sync(r.traffic),
         _db_sync(r.traffic))
        for r in results.durability
    )  # fmt: skip
    note = (
        f"wrk, {CONNECTIONS} connections, {results.durability_s:g} s after a 2 s warm-up, on the whole stack "
        "replicating to moto on loopback, directly or through the relay. non-2xx: 503s when the replica did "
        "not confirm within REPLICATION_ACK_TIMEOUT (counted, and in the latencies). Litestream PUT/s: its "
        "own counter (litestream_replica_operation_total); store req/s: every request the store logged under "
        "the configuration's prefix (LISTs, GETs and the writer lease's too). PUTs per sync: PUTs answered "
        "(any outcome) per sync the service sent. WAL to LTX ms: Litestream's mean time to cut new WAL "
        "frames into a local file (litestream_sync_seconds / litestream_sync_count), a sync's local part."
    )
    return "\n".join([*markdown_table(header, rows), "", note])


def steady_table(results: Results) -> str:
    """PUTs at fixed rates: latency and what reaches the store, by operation."""
    header = (
        "DURABILITY", "store", "offered PUT/s", "PUT 2xx/s", "p50 ms", "p99 ms", "max ms", "not 2xx",
        "syncs/s", "PUTs per sync", *(f"store {op}/s" for op in OPERATIONS), "Litestream PUT/s",
        "WAL to LTX ms",
    )  # fmt: skip
    rows = (
        (r.mode, r.network, f"{r.offered_rps:,.0f}", f"{r.ok_rps:,.1f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
         f"{r.max_ms:.2f}", f"{r.not_ok:,}", _syncs(r.traffic), _per_sync(r.traffic),
         *(f"{r.traffic.store_rps[op]:.2f}" for op in OPERATIONS), f"{r.traffic.litestream_puts_per_s:.2f}",
         _db_sync(r.traffic))
        for r in results.steady
    )  # fmt: skip
    note = (
        f"PUTs sent at a fixed rate for {results.durability_s:g} s each (an open loop: latency counts from "
        "when each was due). Store requests by price class, from the store's own log: PUT (and COPY, POST), "
        "LIST, GET (and HEAD), DELETE (and DeleteObjects)."
    )
    return "\n".join([*markdown_table(header, rows), "", note])


def _schedule(row: OpenLoopRow) -> str:
    kept = "kept" if row.kept_schedule else "**late**: upper bounds"
    return kept + (f"; {row.waited:,} waited for a connection" if row.waited else "")


def _server_cpu(row: OpenLoopRow) -> str:
    return f"{row.server_cpu_us:.0f} ({row.server_cpu_us * row.offered_rps / 1e6:.0%})"


def openloop_table(results: Results) -> str:
    """Each scenario at shares of its capacity, requests sent on a schedule: latency from the due time."""
    header = (
        "scenario", "server", "load", "offered req/s", "achieved req/s", "p50 ms", "p99 ms", "p99.9 ms",
        "max ms", "not 2xx", "server CPU µs/req (busy)", "client lag p99 ms", "client lag max ms",
        "client schedule",
    )  # fmt: skip
    rows = (
        (r.scenario, LABELS[r.server], f"{r.share:.0%} of {r.capacity_rps:,.0f}", f"{r.offered_rps:,.0f}",
         f"{r.achieved_rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.p999_ms:.2f}",
         f"{r.max_ms:.2f}", f"{r.not_ok:,}", _server_cpu(r), f"{r.lag_p99_ms:.2f}", f"{r.lag_max_ms:.2f}",
         _schedule(r))
        for r in results.openloop
    )  # fmt: skip
    note = (
        f"Requests sent on a schedule (an open loop: scripts/benchmark/paced.py, {PACED_CONNECTIONS} "
        f"keep-alive connections at most, pinned to the load core) for {results.openloop_s:g} s after "
        f"{results.openloop_warmup_s:g} s at the same rate, on a fresh server per row, at 25, 50 and 75% of "
        "the scenario's capacity: its median wrk req/s in this run. Latency counts from each request's due "
        "time, so waiting for the server, for a free connection or for the client is in it. Achieved: "
        "requests sent per second, first to last. Server CPU: the worker's (and PostgreSQL's) CPU time "
        "over the load, per request, and that at the offered rate as a share of the server's core. "
        "Client lag: how late the client took up its requests; it kept its schedule when the p99 lag is "
        f"within {LAG_LIMIT_MS:g} ms or a tenth of the p99 latency; otherwise its lateness is a part of "
        "the row's latencies, which are then upper bounds."
    )
    if results.openloop and all(r.client_realtime for r in results.openloop):
        note += " The client ran under SCHED_FIFO, ahead of other processes on the load core."
    return "\n".join([*markdown_table(header, rows), "", note])


def cost_table(results: Results) -> str:
    """The steady loads' store requests, per month and at list prices."""
    names = [prices.name for prices in PRICE_LISTS]
    header = (
        "DURABILITY", "store", "PUT/s", "store req/s", "req/month", "PUT-class req/month",
        *(f"{name} $/month" for name in names),
    )  # fmt: skip
    rows = (
        (r.mode, r.network, f"{r.offered_rps:,.0f}", f"{sum(r.traffic.store_rps.values()):.2f}",
         f"{r.requests_per_month:,.0f}",
         f"{(r.traffic.store_rps['PUT'] + r.traffic.store_rps['LIST']) * SECONDS_PER_MONTH:,.0f}",
         *(f"{r.usd_per_month[name]:,.2f}" for name in names))
        for r in results.steady
    )  # fmt: skip
    prices = "; ".join(
        f"{p.name}: "
        + ", ".join(f"{op} ${p.usd_per_thousand[op]:g}" for op in OPERATIONS)
        + f" per 1,000 ({p.source})"
        for p in PRICE_LISTS
    )
    note = (
        f"A month is {SECONDS_PER_MONTH:,} s (30 days) at the measured rate. List prices, without free "
        f"tiers, as published in 2026 and subject to change: {prices}."
    )
    return "\n".join([*markdown_table(header, rows), "", note])


def plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r.scenario for r in results.rows))
    colours = {
        "reference": "#9e9e9e",
        "service": "#1f77b4",
        "reference-asyncio": "#d0d0d0",
        "service-asyncio": "#17becf",
        "service-before": "#aec7e8",
        "stack-before": "#ffbb78",
        "postgres": "#2ca02c",
        "stack": "#ff7f0e",
    }
    panels: tuple[tuple[str, Callable[[Row], float]], ...] = (
        ("throughput (requests/s, higher is better)", lambda r: r.rps),
        ("p99 latency (ms)", lambda r: r.p99_ms),
        ("server CPU per request (µs)", lambda r: r.cpu_us),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 5.5))
    servers = [server for server in LABELS if any(r.server == server for r in results.rows)]
    width = 0.8 / max(len(servers), 1)
    for offset, server in enumerate(servers):
        rows = {r.scenario: r for r in results.rows if r.server == server}
        shift = (offset - (len(servers) - 1) / 2) * width
        xs = [i + shift for i, scenario in enumerate(scenarios) if scenario in rows]
        for ax, (_, value) in zip(axes, panels, strict=True):
            ys = [value(rows[scenario]) for scenario in scenarios if scenario in rows]
            ax.bar(xs, ys, width, label=LABELS[server], color=colours[server])
    for ax, (title, _) in zip(axes, panels, strict=True):
        ax.set_xticks(range(len(scenarios)))
        ax.set_xticklabels(scenarios, rotation=25, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"{CONNECTIONS} connections, wrk and server pinned to separate cores; medians of {results.rounds} "
        f"rounds of {results.duration_s:g} s; {results.machine}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
