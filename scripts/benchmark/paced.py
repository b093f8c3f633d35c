"""PUTs at a fixed rate (an open loop, like wrk2): a steady, moderate load, where wrk sends as fast as
the server answers.

Request ``i`` is due at ``start + i / rate`` and is sent then, whether or not the earlier ones were
answered; its latency counts from when it was due, so a server that falls behind is charged for
the wait (no coordinated omission). The bodies are the wrk PUT script's: random names of 6 to 16
letters, random dates from 1940 to 2015.

    python -m scripts.benchmark.paced --port PORT --rate PUTS_PER_SECOND --seconds SECONDS

prints one line, ``PACED_JSON {...}`` (``PacedLoad``'s fields), and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import string
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import aiohttp

HOST = "127.0.0.1"
# At most this many requests in flight; beyond it they wait for a connection (and their latency shows it).
CONNECTIONS = 256


@dataclass
class PacedLoad:
    rate: float  # offered, PUTs per second
    seconds: float  # from the first due time to the last answer
    sent: int
    statuses: dict[str, int]  # answers by status code; "error" for no answer
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("2"))

    @property
    def not_ok(self) -> int:
        return self.sent - self.ok


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (``share`` from 0 to 100) of values already sorted; 0 for none."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(share / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _body() -> tuple[str, str]:
    name = "".join(random.choices(string.ascii_letters, k=random.randint(6, 16)))
    born = f"{random.randint(1940, 2015):04d}-{random.randint(1, 12):02d}-{random.randint(1, 28):02d}"
    return name, json.dumps({"dateOfBirth": born})


async def paced_puts(port: int, rate: float, seconds: float) -> PacedLoad:
    """``rate * seconds`` PUTs to ``HOST:port``, each sent when due; every answer awaited."""
    total = max(1, round(rate * seconds))
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def put(due: float) -> None:
            name, body = _body()
            try:
                async with session.put(
                    f"http://{HOST}:{port}/hello/{name}",
                    data=body,
                    headers={"Content-Type": "application/json"},
                ) as answer:
                    await answer.read()
                    statuses[str(answer.status)] += 1
            except (aiohttp.ClientError, TimeoutError):
                statuses["error"] += 1
            latencies.append(time.monotonic() - due)

        start = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        for i in range(total):
            due = start + i / rate
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(put(due)))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
    latencies.sort()
    return PacedLoad(
        rate=rate,
        seconds=elapsed,
        sent=total,
        statuses=dict(statuses),
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        max_ms=latencies[-1] * 1000,
    )


def parse(output: str) -> PacedLoad:
    """The ``PacedLoad`` that ``main`` printed."""
    for line in output.splitlines():
        if line.startswith("PACED_JSON "):
            return PacedLoad(**json.loads(line.removeprefix("PACED_JSON ")))
    raise RuntimeError(f"the paced client printed no result:\n{output}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="PUTs per second")
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    load = asyncio.run(paced_puts(args.port, args.rate, args.seconds))
    print("PACED_JSON " + json.dumps(asdict(load)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
