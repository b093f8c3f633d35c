"""Latency at a steady load: each scenario at 25, 50 and 75% of the capacity wrk measured for it in the
same run, requests sent on a schedule by ``scripts/benchmark/paced.py`` (an open loop), latency from
each request's due time.

wrk's closed loop says how much a server can answer and what its latency is when saturated; a user
at a normal load sees neither. Here each point gets a fresh server on a fresh copy of its database,
``WARMUP_SECONDS`` of requests at the point's rate (sent, not counted), then ``seconds`` of counted
requests, the client pinned to the load generator's core as wrk is."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence

from scripts.benchmark.paced import PacedLoad, parse
from scripts.benchmark.report import say
from scripts.benchmark.results import OpenLoopRow, Row
from scripts.benchmark.runner import Bench
from scripts.benchmark.scenarios import Scenario
from scripts.benchmark.servers import ROOT, cpu_seconds
from scripts.benchmark.wrk import LOAD_CPU

SHARES = (0.25, 0.5, 0.75)
WARMUP_SECONDS = 2.0


def rates(capacity: float, shares: Sequence[float] = SHARES) -> list[float]:
    """The offered rates: each share of ``capacity`` (requests per second), to the request, at least 1."""
    return [float(max(1, round(capacity * share))) for share in shares]


def run_client(
    port: int, rate: float, seconds: float, kind: str, users: int, warmup: float = WARMUP_SECONDS
) -> PacedLoad:
    """The open-loop client (``scripts/benchmark/paced.py``) on the load generator's core."""
    command = ["taskset", "-c", str(LOAD_CPU), sys.executable, "-m", "scripts.benchmark.paced"]
    command += ["--port", str(port), "--rate", f"{rate:g}", "--seconds", f"{seconds:g}"]
    command += ["--kind", kind, "--users", str(users), "--warmup", f"{warmup:g}", "--realtime"]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=warmup + seconds + 120, check=True
    )
    return parse(result.stdout)


def openloop_row(
    scenario: Scenario, share: float, capacity: float, load: PacedLoad, server_cpu: float = 0.0
) -> OpenLoopRow:
    """The row of ``load``; ``server_cpu``: the server's CPU seconds over the whole load."""
    return OpenLoopRow(
        scenario=scenario.title,
        server=scenario.server,
        share=share,
        capacity_rps=capacity,
        offered_rps=load.rate,
        achieved_rps=load.achieved_rate,
        p50_ms=load.p50_ms,
        p99_ms=load.p99_ms,
        p999_ms=load.p999_ms,
        max_ms=load.max_ms,
        not_ok=load.not_ok,
        lag_p99_ms=load.lag_p99_ms,
        lag_max_ms=load.lag_max_ms,
        waited=load.waited,
        kept_schedule=load.kept_schedule,
        requests=load.sent,
        client_cpu=load.client_cpu,
        client_runqueue_ms=load.runqueue_ms,
        client_realtime=load.realtime,
        server_cpu_us=server_cpu * 1e6 / max(load.answered_all, 1),
    )


def run_openloop(
    bench: Bench,
    plan: Sequence[Scenario],
    capacity: Mapping[tuple[str, str], Row],
    seconds: float,
    shares: Sequence[float] = SHARES,
) -> list[OpenLoopRow]:
    """Every scenario of ``plan`` at each share of its capacity (its row of ``capacity``, by title and
    server), on a fresh server each time."""
    rows: list[OpenLoopRow] = []
    for scenario in plan:
        measured = capacity.get((scenario.title, scenario.server))
        if measured is None:
            say(f"open loop: no capacity measured for {scenario.title}, {scenario.server}: skipped")
            continue
        for share, rate in zip(shares, rates(measured.rps, shares), strict=True):
            name = bench.name("openloop", scenario.server, scenario.kind, f"{share:.0%}".rstrip("%"))
            database = bench.postgres if scenario.server == "postgres" else None
            with bench.server(scenario, name) as server:
                cpu = cpu_seconds(server.worker) + (database.cpu_seconds() if database else 0.0)
                load = run_client(server.port, rate, seconds, scenario.kind, scenario.users)
                cpu = cpu_seconds(server.worker) + (database.cpu_seconds() if database else 0.0) - cpu
            row = openloop_row(scenario, share, measured.rps, load, cpu)
            rows.append(row)
            say(
                f"open loop {scenario.title:<30} {scenario.server:<9} {share:4.0%} {rate:6.0f}/s offered "
                f"{row.achieved_rps:6.0f}/s sent p50 {row.p50_ms:6.2f} p99 {row.p99_ms:7.2f} "
                f"p99.9 {row.p999_ms:7.2f} max {row.max_ms:7.2f} ms not 2xx {row.not_ok} "
                f"client lag p99 {row.lag_p99_ms:.2f} max {row.lag_max_ms:.2f} ms waited {row.waited} "
                f"client cpu {load.client_cpu:.0%} runqueue {load.runqueue_ms:.0f} ms "
                f"server cpu {row.server_cpu_us:.0f} us/req"
            )
    return rows
