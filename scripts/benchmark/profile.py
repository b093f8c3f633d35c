"""The service's worker sampled with py-spy under one scenario's load; the busiest functions."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from pathlib import Path

from scripts.benchmark.postgres import PostgresDatabases, postgres_databases
from scripts.benchmark.runner import Bench
from scripts.benchmark.scenarios import Scenario
from scripts.benchmark.seed import seed_database
from scripts.benchmark.servers import SERVER_CPU
from scripts.benchmark.wrk import run_wrk, wrk_command


def profile(kind: str, duration: float, workdir: Path, top: int = 25, on_postgres: bool = False) -> str:
    """Sample the service's worker with py-spy under one scenario's load; the busiest functions.
    With ``on_postgres``, the service runs on the PostgreSQL profile (a server started as in a run)."""
    seeded = workdir / "seed" / "10000.db"
    seed_database(seeded, 10_000)
    samples_file = workdir / "profile.txt"
    with contextlib.ExitStack() as stack:
        database: PostgresDatabases | None = None
        if on_postgres:
            database = stack.enter_context(postgres_databases(str(SERVER_CPU)))
            database.seed(10_000, seeded)
        bench = Bench(workdir, duration, 1.0, {10_000: seeded}, database)
        scenario = Scenario(f"profile {kind}", "postgres" if on_postgres else "service", kind, 10_000)
        server = stack.enter_context(bench.server(scenario, f"profile-{kind}"))
        script = bench.script(kind, 10_000)
        run_wrk(server.port, script, 1.0)
        load = subprocess.Popen(
            wrk_command(server.port, script, round(duration) + 2), stdout=subprocess.DEVNULL
        )
        try:
            time.sleep(1)
            subprocess.run(
                ["py-spy", "record", "--pid", str(server.worker), "--duration", str(round(duration)),
                 "--rate", "250", "--format", "raw", "--output", str(samples_file), "--nonblocking"],
                check=True, capture_output=True, timeout=duration + 60,
            )  # fmt: skip
        finally:
            load.wait(timeout=duration + 30)
    return summarise_profile(samples_file.read_text(), top)


def summarise_profile(collapsed: str, top: int) -> str:
    """Self and inclusive shares per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    lines = [f"{total} samples", "", "self  function"]
    for frame, count in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"{count / total:5.1%} {frame}")
    lines += ["", "incl  function (the service's own code)"]
    for frame, count in sorted(inclusive.items(), key=lambda item: -item[1]):
        if "service/" in frame:
            lines.append(f"{count / total:5.1%} {frame}")
    return "\n".join(lines)
