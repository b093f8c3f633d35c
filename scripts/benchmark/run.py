"""The run: the seeded databases, the PostgreSQL server, every scenario round after round, the sustained
loads and the restore; medians over the rounds in ``Results``."""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from scripts.benchmark.durability import run_durability
from scripts.benchmark.openloop import WARMUP_SECONDS as OPENLOOP_WARMUP
from scripts.benchmark.openloop import run_openloop
from scripts.benchmark.postgres import PostgresDatabases, postgres_databases
from scripts.benchmark.report import say
from scripts.benchmark.restore import time_restore
from scripts.benchmark.results import Results, Row
from scripts.benchmark.runner import Bench, Sample
from scripts.benchmark.scenarios import (
    OTHER_LOOP,
    Scenario,
    openloop_scenarios,
    scenarios,
    sustained_scenarios,
)
from scripts.benchmark.seed import seed_database
from scripts.benchmark.servers import SERVER_CPU, stack_available
from scripts.benchmark.sustained import run_sustained


def machine_description() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores, {model}"


def aggregate(scenario: Scenario, samples: Sequence[Sample]) -> Row:
    """Medians over the rounds; errors added up; the highest peak RSS."""
    return Row(
        scenario=scenario.title,
        server=scenario.server,
        rps=statistics.median(s.load.rps for s in samples),
        p50_ms=statistics.median(s.load.p50_ms for s in samples),
        p99_ms=statistics.median(s.load.p99_ms for s in samples),
        errors=sum(s.load.errors for s in samples),
        peak_rss_mb=max(s.peak_rss_mb for s in samples),
        ready_s=statistics.median(s.ready_s for s in samples),
        cpu_us=statistics.median(s.cpu_us_per_request for s in samples),
        rounds=len(samples),
        db_cpu_us=statistics.median(s.db_cpu_us_per_request for s in samples),
        client_busy=max(s.load.client_busy for s in samples),
    )


def run(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results(machine_description(), args.command, args.duration, args.rounds)
    small, medium, large = (100, 1_000, 10_000) if args.quick else (1_000, 10_000, 1_000_000)
    with_sqlite = args.only in ("all", "sqlite")
    with_openloop = args.openloop_seconds > 0 and args.only in ("all", "openloop")
    with_postgres = args.only in ("all", "postgres") or with_openloop
    with_sustained = args.sustained > 0 and args.only in ("all", "sqlite", "sustained")
    with_durability = args.durability > 0 and args.only in ("all", "durability")
    seeded: dict[int, Path] = {}
    for users in (small, medium, large) if with_sqlite else (medium,):
        started = time.perf_counter()
        seeded[users] = workdir / "seed" / f"{users}.db"
        seed_database(seeded[users], users)
        say(f"seeded {users:,} users in {time.perf_counter() - started:.1f} s")
    with_stack = args.only != "postgres" and stack_available()
    if args.only == "durability" and not with_stack:
        raise RuntimeError(
            "the durability scenarios need the production stack: scripts/start.sh and litestream.yml"
        )
    with contextlib.ExitStack() as stack:
        database: PostgresDatabases | None = None
        if with_postgres:
            try:
                database = stack.enter_context(postgres_databases(str(SERVER_CPU)))
            except RuntimeError as exc:
                if not with_sqlite and not with_openloop:
                    raise
                results.notes.append(f"PostgreSQL scenarios skipped: {exc}")
                with_postgres = False
        if database is not None:
            started = time.perf_counter()
            database.seed(medium, seeded[medium])
            say(
                f"seeded PostgreSQL {database.version} with {medium:,} users "
                f"in {time.perf_counter() - started:.1f} s"
            )
            results.notes.append(
                f"service on PostgreSQL: PostgreSQL {database.version} (Debian's package, default settings: "
                "fsync and synchronous_commit on) on 127.0.0.1, pinned with the service to core "
                f"{SERVER_CPU}; the service's default pool (at most 10 connections); a fresh database "
                "cloned from a seeded template for every sample. DB CPU µs/req is the PostgreSQL "
                "server's processes' CPU over the measured seconds per request."
            )
        bench = Bench(
            workdir, args.duration, args.warmup, seeded, database, args.before, args.litestream_config
        )
        if args.only in ("all", "sqlite", "postgres"):
            plan = scenarios(
                small,
                medium,
                large,
                with_stack,
                with_sqlite,
                with_postgres,
                other_loop=args.other_loop,
                before=args.before is not None,
            )
            run_plan(args, plan, bench, results)
        if with_openloop:
            plan = openloop_scenarios(medium, with_stack, postgres=with_postgres)
            if not with_sqlite:  # --only openloop: the capacity of each scenario, by wrk as in the main table
                run_plan(args, plan, bench, results)
            results.openloop_s, results.openloop_warmup_s = args.openloop_seconds, OPENLOOP_WARMUP
            capacity = {(row.scenario, row.server): row for row in results.rows}
            results.openloop = run_openloop(bench, plan, capacity, args.openloop_seconds)
        if with_sustained:
            results.sustained_s = args.sustained
            plan = sustained_scenarios(medium, with_stack, before=args.before is not None)
            results.sustained = run_sustained(bench, plan, args.sustained)
        if with_durability and with_stack:
            results.durability_s = args.durability
            results.durability, results.steady = run_durability(bench, medium, args.durability)
    if not with_sqlite:
        return results
    return finish(workdir, results, seeded[large], large, with_stack)


# wrk using more than this share of its core is taken as setting the rate itself.
SATURATED = 0.9


def run_plan(args: argparse.Namespace, plan: Sequence[Scenario], bench: Bench, results: Results) -> None:
    """Every scenario of ``plan``, ``args.rounds`` times; the medians go to ``results.rows``."""
    samples: dict[Scenario, list[Sample]] = {scenario: [] for scenario in plan}
    # Round after round of every scenario, reference and service side by side, so that a noisy
    # neighbour on this shared machine weighs on both; the table shows medians over the rounds.
    for round_number in range(1, args.rounds + 1):
        for scenario in plan:
            sample = bench.sample(scenario)
            samples[scenario].append(sample)
            say(
                f"round {round_number} {scenario.title:<30} {scenario.server:<9} "
                f"{sample.load.rps:8.0f} req/s p99 {sample.load.p99_ms:7.2f} ms errors {sample.load.errors} "
                f"rss {sample.peak_rss_mb:5.1f} MB cpu {sample.cpu_us_per_request:6.1f} us/req"
                f" db cpu {sample.db_cpu_us_per_request:6.1f} us/req"
                f" wrk's core {sample.load.client_busy:4.0%}"
            )
    rows = {(scenario.title, scenario.server): aggregate(scenario, samples[scenario]) for scenario in plan}
    for scenario in plan:
        row = rows[(scenario.title, scenario.server)]
        if scenario.baseline is not None:
            reference = (
                "reference" + OTHER_LOOP[0] if scenario.server.endswith(OTHER_LOOP[0]) else "reference"
            )
            base = (
                rows.get((scenario.baseline, reference))
                or rows.get((scenario.baseline, "reference"))
                or rows[(scenario.baseline, "service")]
            )
            row.ratio = row.rps / base.rps
            row.cpu_ratio = base.cpu_us / row.cpu_us if row.cpu_us > 0 else None
            row.ratio_of = f"{base.scenario}, {base.server}"
        results.rows.append(row)
    # wrk on one core drives one server at a time; if it used most of that core, the rate is its own.
    busy = [row for row in rows.values() if row.client_busy > SATURATED]
    for row in busy:
        results.notes.append(
            f"{row.scenario}, {row.server}: wrk used {row.client_busy:.0%} of its core, so its req/s is "
            "(near) the load generator's limit, not the server's: the CPU ratio is the fairer share"
        )


def finish(workdir: Path, results: Results, seeded: Path, large: int, with_stack: bool) -> Results:
    """The restore timing (with the production stack files), or the note that says why not."""
    if with_stack:
        try:
            results.restore_s = time_restore(workdir, seeded, large)
            results.restore_users = large
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            results.restore_note = f"not measured: {exc}"
    else:
        results.notes.append("full-stack scenarios skipped: scripts/start.sh or litestream.yml missing")
        results.restore_note = "not measured: the production stack files are missing"
    return results
