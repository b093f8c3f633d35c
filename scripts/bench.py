"""Benchmark the service against a bare aiohttp app, both under gunicorn's aiohttp worker.

One run starts each server on a real SQLite file, drives it with ``wrk`` over loopback (64
connections; the server pinned to one core, the load generator to the other), and prints per
scenario: requests/s, p50, p99, errors (socket errors and any non-2xx answer), the worker's peak
RSS and our figure as a share of the reference. It also times start-up to ``/readyz`` 200 and,
when the production stack files are present, runs GET, PUT and the mix through ``scripts/start.sh``
(Litestream replicating to a folder) and times a ``litestream restore`` of a 1,000,000-user
database from a local S3 server. The durability scenarios run the whole stack replicating to that
local S3 server, directly and through a relay that adds 20 ms each way, with DURABILITY local and
replicated: wrk's PUTs, PUTs at fixed rates, and the object-store requests each makes, priced per
month (scripts/benchmark/durability.py). The PostgreSQL profile runs GET, PUT and the mix too: the
same service with ``DATABASE_URL`` pointing at a PostgreSQL server the bench starts on 127.0.0.1
(pinned to the server's core) and stops (``scripts/pg_cluster.py``). The open loop sends GET, PUT and
the mix on a schedule at 25, 50 and 75% of the capacity wrk measured for each, on the server alone,
the whole stack and PostgreSQL, and times each request from when it was due
(scripts/benchmark/openloop.py). The table goes to standard output and
``docs/benchmarks.md`` style; the plot to ``docs/benchmarks.png``.

    python scripts/bench.py [--only all|sqlite|postgres|sustained|durability|openloop]
                            [--duration SECONDS] [--rounds N] [--sustained SECONDS]
                            [--durability SECONDS] [--openloop-seconds SECONDS] [--quick]
                            [--plot PATH] [--json PATH]

Every load is bounded (``wrk -d``, the paced client's ``--seconds``) and every process started here
is stopped before it exits.
"""

# The command alone: the bench's parts are in scripts/benchmark/, its wrk scripts in scripts/benchmark/lua/.

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.benchmark.profile import profile  # noqa: E402
from scripts.benchmark.report import (  # noqa: E402
    cost_table,
    durability_table,
    openloop_table,
    plot,
    say,
    steady_table,
    sustained_table,
    table,
)
from scripts.benchmark.run import run  # noqa: E402
from scripts.benchmark.runner import Bench  # noqa: E402
from scripts.benchmark.scenarios import OTHER_LOOP  # noqa: E402
from scripts.benchmark.seed import seed_database  # noqa: E402
from scripts.benchmark.servers import stack_available  # noqa: E402
from scripts.benchmark.timeline import run_timeline  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of measured load per sample")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each sample")
    parser.add_argument("--rounds", type=int, default=3, help="samples of every scenario; medians are shown")
    parser.add_argument(
        "--only",
        choices=("all", "sqlite", "postgres", "sustained", "durability", "openloop"),
        default="all",
        help="run only one profile's scenarios (each beside the bare app), or only the sustained writes, or "
        "only DURABILITY local against replicated, or only the open loop (after wrk's capacity of each of "
        "its scenarios); the default runs everything",
    )
    parser.add_argument(
        "--openloop-seconds",
        type=float,
        default=12.0,
        help="seconds of each open-loop window (GET, PUT and the mix on the server alone, the whole stack "
        "and PostgreSQL, at 25, 50 and 75%% of their capacity; 2 s at the same rate before each); 0 skips "
        "them",
    )
    parser.add_argument(
        "--sustained",
        type=float,
        default=60.0,
        help="seconds of each sustained scenario (PUTs, the mix; server alone, whole stack); 0 skips them",
    )
    parser.add_argument(
        "--durability",
        type=float,
        default=20.0,
        help="seconds of each load of the durability scenarios (DURABILITY local and replicated, the store "
        "on loopback and 20 ms away each way: PUTs at 50/s, at 500/s, then wrk's); 0 skips them",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: small databases, one 2 s round")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "benchmarks.png")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases)")
    parser.add_argument(
        "--other-loop",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"also run the bare app and the service under {OTHER_LOOP[1]} (default: on)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="a checkout of an earlier revision (git worktree add PATH REV): its service runs beside this "
        "one in GET, PUT, the mix and the sustained scenarios, from the same run",
    )
    parser.add_argument(
        "--litestream-config",
        type=Path,
        default=None,
        metavar="PATH",
        help="run the whole stack with this litestream.yml instead of the project's (to measure "
        "Litestream's checkpoint settings: docs/benchmarks.md)",
    )
    parser.add_argument(
        "--timeline",
        nargs="?",
        const="both",
        choices=("both", "service", "stack"),
        help="instead of the benchmark: sustained PUTs (--sustained seconds) with the worker's timeline on "
        "(TRACE_FILE), and what the slowest requests overlapped; on the server alone and the whole stack, "
        "or only the one named",
    )
    parser.add_argument(
        "--profile",
        choices=("get", "put", "mix"),
        help="instead of the benchmark: sample the service under this load with py-spy and print the profile "
        "(on the PostgreSQL profile with --only postgres)",
    )
    args = parser.parse_args(argv)
    args.command = " ".join(["python scripts/bench.py", *(sys.argv[1:] if argv is None else argv)])
    if args.quick:
        args.duration, args.warmup, args.rounds = min(args.duration, 2.0), min(args.warmup, 1.0), 1
        args.sustained = min(args.sustained, 5.0)
        args.durability = min(args.durability, 5.0)
        args.openloop_seconds = min(args.openloop_seconds, 3.0)
    if shutil.which("wrk") is None:
        say("wrk is not installed: install it with `apt-get install wrk` (Debian's package)")
        return 2
    if shutil.which("taskset") is None:
        say("taskset is not installed: install it with `apt-get install util-linux`")
        return 2
    if (os.cpu_count() or 1) < 2:
        say("needs two cores: one for the server, one for wrk")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="hello-bench-"))
    if args.timeline:
        try:
            seeded = workdir / "seed" / "10000.db"
            seed_database(seeded, 10_000)
            bench = Bench(
                workdir,
                args.duration,
                args.warmup,
                {10_000: seeded},
                litestream_config=args.litestream_config,
            )
            servers = [
                server
                for server in ("service", "stack")
                if args.timeline in ("both", server) and (server != "stack" or stack_available())
            ]
            print(run_timeline(bench, 10_000, args.sustained, servers))
        finally:
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        return 0
    if args.profile:
        try:
            print(profile(args.profile, args.duration, workdir, on_postgres=args.only == "postgres"))
        finally:
            if args.keep:
                say(f"work folder kept: {workdir} (profile.txt: py-spy's collapsed stacks)")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        return 0
    try:
        results = run(args, workdir)
    finally:
        if args.keep:
            say(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"machine: {results.machine}\ncommand: {results.command}\n")
    if results.rows:
        print(table(results))
    for note in results.notes:
        print(f"- {note}")
    if results.sustained:
        print(f"\nSustained load\n\n{sustained_table(results)}")
    if results.openloop:
        print(f"\nLatency at a steady load (open loop)\n\n{openloop_table(results)}")
    if results.durability:
        print(f"\nDurability: local or replicated\n\n{durability_table(results)}")
    if results.steady:
        print(f"\nSteady PUTs\n\n{steady_table(results)}")
        print(f"\nObject-store requests at list prices\n\n{cost_table(results)}")
    if results.rows and args.only != "openloop":  # its capacity rows alone would replace the full plot
        plot(results, args.plot)
        print(f"\nplot: {args.plot}")
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
