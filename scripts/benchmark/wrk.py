"""The load: wrk on the load generator's core, its scripts (lua/) and the figures it prints."""

from __future__ import annotations

import json
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path

from scripts.benchmark.servers import HOST

CONNECTIONS = 64
LOAD_CPU = 1
LUA = Path(__file__).with_name("lua")


@dataclass
class Load:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    p999_ms: float = 0.0
    max_ms: float = 0.0
    non2xx: int = 0  # answers outside 2xx, also counted in errors
    # wrk's own CPU time (user and system): near ``seconds`` means its core, not the server, set the rate.
    client_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def client_busy(self) -> float:
        """The share of its core wrk used (warm-up and start-up included, so a little over the load's)."""
        return self.client_cpu_s / self.seconds


def lua_script(kind: str, users: int) -> str:
    """The wrk script for ``kind`` (get, put or mix) over ``users`` seeded users: lua/common.lua with
    the user count in place of ``__USERS__``, then lua/KIND.lua."""
    common = (LUA / "common.lua").read_text().replace("__USERS__", str(max(users, 1)))
    return common + (LUA / f"{kind}.lua").read_text()


def wrk_command(port: int, script: Path, seconds: int, *options: str) -> list[str]:
    """wrk on the load core: one thread, ``CONNECTIONS`` connections, for ``seconds``, with ``script``."""
    return [
        "taskset", "-c", str(LOAD_CPU),
        "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", *options,
        "-s", str(script), f"http://{HOST}:{port}/",
    ]  # fmt: skip


def run_wrk(port: int, script: Path, seconds: float) -> Load:
    command = wrk_command(port, script, max(1, round(seconds)), "--latency", "--timeout", "5s")
    # wrk is the only child this process waits for meanwhile: its CPU time is what the count grows by.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    for line in result.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            raw = json.loads(line.removeprefix("BENCH_JSON "))
            errors = sum(raw[key] for key in ("non2xx", "connect", "read", "write", "timeout"))
            return Load(
                requests=raw["requests"],
                seconds=raw["duration_us"] / 1e6,
                errors=errors,
                p50_ms=raw["p50_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
                p999_ms=raw["p999_us"] / 1000,
                max_ms=raw["max_us"] / 1000,
                non2xx=raw["non2xx"],
                client_cpu_s=client_cpu,
            )
    raise RuntimeError(f"wrk printed no result:\n{result.stdout}\n{result.stderr}")
