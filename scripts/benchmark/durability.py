"""Durability, local or replicated: what a PUT's 204 waiting for the replica costs in throughput, in
latency and in object-store requests.

The whole stack (``scripts/start.sh``: the supervisor, Litestream and gunicorn) replicates to a
local S3 server (moto, on the load generator's core), in four configurations: ``DURABILITY`` local
or replicated, with the store on loopback or behind a relay that adds a delay each way (20 ms: a
round trip like an object store's in the same region; ``scripts/benchmark/relay.py``). Each
configuration gets a fresh stack on a fresh copy of the seeded database and its own prefix in the
bucket, then:

1. after 3 s of PUTs at the first rate, unmeasured (Litestream's work after its first sync, the
   snapshot and the first compactions, falls there), PUTs at fixed rates
   (``scripts/benchmark/paced.py``), one window each: the object-store requests
   a steady, moderate load makes, priced per month (``scripts/benchmark/pricing.py``);
2. wrk's PUTs (64 connections) after a 2 s warm-up, as fast as the stack answers: throughput and
   the tail.

Over every window: the store's requests under the configuration's prefix, from moto's own log
(Litestream's counter, ``litestream_replica_operation_total``, counts PUTs and deletions but not its
LISTs and GETs on S3, nor the writer lease's requests), Litestream's PUT counter, and the service's
``hello_replication_syncs_total`` and ``hello_replication_acks_total``, scraped from the service's
metrics port before and after.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scripts.benchmark.objectstore import CREDENTIALS, RequestLog, local_s3
from scripts.benchmark.paced import PacedLoad, parse
from scripts.benchmark.pricing import PRICE_LISTS, per_month, per_second
from scripts.benchmark.relay import relay_process
from scripts.benchmark.report import say
from scripts.benchmark.results import DurabilityRow, SteadyRow, Traffic
from scripts.benchmark.runner import Bench
from scripts.benchmark.scenarios import Scenario
from scripts.benchmark.servers import HOST, ROOT, free_port
from scripts.benchmark.wrk import LOAD_CPU, Load, run_wrk

DELAY = 0.020  # seconds the relay adds each way
RATES = (50.0, 500.0)  # PUTs per second of the steady loads
MODES = ("local", "replicated")
WARMUP_SECONDS = 3.0  # PUTs at the first rate, unmeasured, before the first window


@dataclass(frozen=True)
class Configuration:
    mode: str  # DURABILITY
    delay: float  # seconds added each way between Litestream and the store

    @property
    def network(self) -> str:
        return "loopback" if self.delay == 0 else f"+{self.delay * 1000:g} ms each way"

    @property
    def slug(self) -> str:
        """Its name in the bucket and the work folder."""
        return f"{self.mode}-{round(self.delay * 1000)}ms"


def configurations(delay: float = DELAY) -> list[Configuration]:
    """Both modes on loopback, then both behind the relay."""
    return [Configuration(mode, d) for d in (0.0, delay) for mode in MODES]


# One sample of the Prometheus text format: a name, its labels if any, a value.
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    """The samples of a Prometheus text exposition (comments skipped)."""
    found: list[Sample] = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        try:
            found.append(Sample(match.group(1), labels, float(match.group(3))))
        except ValueError:
            continue
    return found


def total(samples: Sequence[Sample], name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


@dataclass
class Mark:
    at: float
    samples: list[Sample]
    log_offset: int


class Probe:
    """Marks the start and end of a window: the service's metrics (its own and Litestream's, served
    after them) and where moto's log stands."""

    def __init__(self, metrics_port: int, log: RequestLog, prefix: str) -> None:
        self.url = f"http://{HOST}:{metrics_port}/metrics"
        self.log = log
        self.prefix = prefix

    def mark(self) -> Mark:
        with urllib.request.urlopen(self.url, timeout=10) as answer:
            text = answer.read().decode()
        samples = parse_metrics(text)
        if not any(s.name == "litestream_replica_operation_total" for s in samples):
            raise RuntimeError(f"no litestream_replica_operation_total among the metrics at {self.url}")
        return Mark(time.monotonic(), samples, self.log.offset())

    def traffic(self, before: Mark, after: Mark) -> Traffic:
        seconds = after.at - before.at

        def delta(name: str, **labels: str) -> float:
            return total(after.samples, name, **labels) - total(before.samples, name, **labels)

        syncs = delta("hello_replication_syncs_total")
        acks = {
            outcome: round(delta("hello_replication_acks_total", outcome=outcome))
            for outcome in ("confirmed", "timeout", "unavailable")
        }
        db_syncs = delta("litestream_sync_count")
        return Traffic(
            seconds=seconds,
            store_rps=per_second(self.log.count(self.prefix, before.log_offset, after.log_offset), seconds),
            litestream_puts_per_s=delta("litestream_replica_operation_total", operation="PUT") / seconds,
            syncs_per_s=syncs / seconds,
            puts_per_sync=sum(acks.values()) / syncs if syncs else None,
            acks=acks,
            db_sync_ms=delta("litestream_sync_seconds") / db_syncs * 1000 if db_syncs else None,
        )


def run_paced(port: int, rate: float, seconds: float) -> PacedLoad:
    """``scripts/benchmark/paced.py`` on the load generator's core."""
    command = ["taskset", "-c", str(LOAD_CPU), sys.executable, "-m", "scripts.benchmark.paced"]
    command += ["--port", str(port), "--rate", f"{rate:g}", "--seconds", f"{seconds:g}"]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120, check=True
    )
    return parse(result.stdout)


def steady_row(config: Configuration, load: PacedLoad, traffic: Traffic) -> SteadyRow:
    return SteadyRow(
        mode=config.mode,
        network=config.network,
        offered_rps=load.rate,
        ok_rps=load.ok / load.seconds,
        p50_ms=load.p50_ms,
        p99_ms=load.p99_ms,
        max_ms=load.max_ms,
        not_ok=load.not_ok,
        traffic=traffic,
        requests_per_month=per_month(sum(traffic.store_rps.values())),
        usd_per_month={prices.name: prices.monthly_usd(traffic.store_rps) for prices in PRICE_LISTS},
    )


def durability_row(config: Configuration, load: Load, traffic: Traffic) -> DurabilityRow:
    return DurabilityRow(
        mode=config.mode,
        network=config.network,
        ok_rps=(load.requests - load.non2xx) / load.seconds,
        p50_ms=load.p50_ms,
        p99_ms=load.p99_ms,
        p999_ms=load.p999_ms,
        max_ms=load.max_ms,
        non2xx=load.non2xx,
        socket_errors=load.errors - load.non2xx,
        traffic=traffic,
    )


def _describe(traffic: Traffic) -> str:
    per_sync = f"{traffic.puts_per_sync:.1f}" if traffic.puts_per_sync is not None else "-"
    return (
        f"store {sum(traffic.store_rps.values()):6.1f} req/s "
        f"(litestream PUT {traffic.litestream_puts_per_s:6.1f}/s) "
        f"syncs {traffic.syncs_per_s:6.1f}/s puts/sync {per_sync} acks {traffic.acks} "
        f"litestream db sync {traffic.db_sync_ms or 0:.1f} ms"
    )


def run_durability(
    bench: Bench,
    users: int,
    seconds: float,
    rates: Sequence[float] = RATES,
    delay: float = DELAY,
) -> tuple[list[DurabilityRow], list[SteadyRow]]:
    """Every configuration on a fresh stack: the steady loads, then wrk's. The rows of both."""
    folder = bench.workdir / "durability"
    rows: list[DurabilityRow] = []
    steady: list[SteadyRow] = []
    with local_s3(folder, cpu=LOAD_CPU) as s3:
        log = RequestLog(folder / "moto.log")
        for config in configurations(delay):
            with contextlib.ExitStack() as stack:
                port = s3.port
                if config.delay > 0:
                    relay_log = folder / f"relay-{config.slug}.log"
                    port = stack.enter_context(
                        relay_process(s3.port, config.delay, free_port(), relay_log, cpu=LOAD_CPU)
                    )
                metrics_port = free_port()
                extra = {
                    "REPLICA_URL": s3.url(f"{config.slug}/hello.db", port),
                    "DURABILITY": config.mode,
                    "METRICS_PORT": str(metrics_port),
                    **CREDENTIALS,
                }
                scenario = Scenario("PUT, durability", "stack", "put", users)
                name = bench.name("durability", config.slug)
                server = stack.enter_context(bench.server(scenario, name, extra))
                probe = Probe(metrics_port, log, config.slug)
                # Litestream's work after its first sync (the snapshot, the first compactions) and the
                # first requests' warm-up, outside the windows.
                run_paced(server.port, rates[0], WARMUP_SECONDS)
                for rate in rates:
                    before = probe.mark()
                    paced = run_paced(server.port, rate, seconds)
                    traffic = probe.traffic(before, probe.mark())
                    steady.append(steady_row(config, paced, traffic))
                    say(
                        f"durability {config.mode:<10} {config.network:<16} {rate:5.0f} PUT/s offered: "
                        f"{paced.ok / paced.seconds:6.1f} 2xx/s p50 {paced.p50_ms:6.2f} ms "
                        f"p99 {paced.p99_ms:7.2f} ms "
                        f"not 2xx {paced.not_ok} {_describe(traffic)}"
                    )
                script = bench.script("put", users)
                run_wrk(server.port, script, 2.0)
                before = probe.mark()
                load = run_wrk(server.port, script, seconds)
                row = durability_row(config, load, probe.traffic(before, probe.mark()))
                rows.append(row)
                say(
                    f"durability {config.mode:<10} {config.network:<16} wrk: {row.ok_rps:7.0f} 2xx/s "
                    f"p50 {row.p50_ms:6.2f} ms p99 {row.p99_ms:7.2f} ms p99.9 {row.p999_ms:7.2f} ms "
                    f"non-2xx {row.non2xx} {_describe(row.traffic)}"
                )
    return rows, steady
