"""Render the dashboard's SLO rows from a real run: the stack, a load, a real Prometheus, matplotlib.

No Grafana is needed (nor reachable on the machines this project is built on): the script runs the whole
stack on loopback (scripts/start.sh: the supervisor, Litestream replicating to a folder, gunicorn), a
real Prometheus (Debian's `prometheus` package) that scrapes it every second and evaluates
ops/prometheus/slo_requests.yml and slo_replica_lag.yml, and drives a bounded, open-loop load through
four phases (docs/slo.md, "The picture"):

1. steady: GETs of known users (200) and of unknown ones (404), PUTs (204) and refused PUTs (400);
2. slow writes: another connection holds SQLite's write lock for half of every second, so PUTs wait;
3. database locked: it holds the lock throughout, so PUTs give up after 5 s with 503 (the store
   unavailable, a documented refusal with Retry-After);
4. recovery: steady again.

Then it asks Prometheus, through its HTTP API, for every query of the dashboard's SLO rows
(ops/grafana/hello-birthday.json) over the run, and plots each panel as Grafana would lay it out: an
objective per row, its SLI, error budget left and burn rate. Windows longer than the run cover the run
only: a burn rate "over 3d" is the run's. Everything listens on 127.0.0.1 and stops at the end.

    make .venv/.installed-dev                      # matplotlib comes with the bench extras
    .venv/bin/python ops/slo_render.py             # about 5 minutes; writes docs/slo-dashboard.png
    .venv/bin/python ops/slo_render.py --scale 0.2 --output /tmp/slo.png   # a 1-minute smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "ops" / "grafana" / "hello-birthday.json"
SLO_RULES = (
    ROOT / "ops" / "prometheus" / "slo_requests.yml",
    ROOT / "ops" / "prometheus" / "slo_replica_lag.yml",
)
START_SH = ROOT / "scripts" / "start.sh"
VENV_BIN = ROOT / ".venv" / "bin"
APP = "hello-birthday"
# Users PUT before the load, whom the GETs then ask for (200).
KNOWN_USERS = 500
# Requests per second of each kind, in every phase: about 36 in all, a tenth of them PUTs.
RATES = {"get": 25.0, "get_unknown": 5.0, "put": 4.0, "put_invalid": 2.0}
# Phases: name, seconds (before --scale), and what holds SQLite's write lock meanwhile.
PHASES = (
    ("steady", 90.0, "none"),
    ("slow writes", 60.0, "half"),
    ("database locked", 45.0, "full"),
    ("recovery", 90.0, "none"),
)
OBJECTIVE_NAMES = {
    "availability": "Availability",
    "get_latency": "GET latency",
    "put_latency": "PUT latency",
    "replica_lag": "Replica lag",
    "confirmed_writes": "Confirmed writes",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_for(url: str, process: subprocess.Popen[bytes], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        if http_status(url) == 200:
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not answer {url} within {seconds:g} s")


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM to the process group the process leads; SIGKILL if it is still there after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


@dataclass
class Stack:
    base_url: str
    metrics_address: str
    database: Path


CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
BUCKET = "slo-render"


@contextlib.contextmanager
def s3_server(workdir: Path) -> Iterator[str]:
    """moto_server on loopback with a bucket: yields the replica URL for Litestream."""
    import boto3

    port = free_port()
    with (workdir / "moto.log").open("wb") as log:
        process = subprocess.Popen(
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/moto-api/", process, 30, "moto_server")
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_REGION"],
        )
        client.create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}/hello.db?endpoint={endpoint}&region=us-east-1"
    finally:
        stop(process)


@contextlib.contextmanager
def stack(workdir: Path, replica_url: str) -> Iterator[Stack]:
    """The production stack (scripts/start.sh) on loopback, replicating to ``replica_url``."""
    port, metrics_port, litestream_port = free_port(), free_port(), free_port()
    database = workdir / "data" / "hello.db"
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(metrics_port),
        "DATABASE_PATH": str(database),
        "REPLICA_URL": replica_url,
        **CREDENTIALS,
        "LITESTREAM_METRICS_ADDR": f"127.0.0.1:{litestream_port}",
        "LITESTREAM_SOCKET": str(workdir / "litestream.sock"),
        "LOG_LEVEL": "WARNING",
    }
    with (workdir / "stack.log").open("wb") as log:
        process = subprocess.Popen(
            [str(START_SH)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", process, 60, "the stack")
        yield Stack(f"http://127.0.0.1:{port}", f"127.0.0.1:{metrics_port}", database)
    finally:
        stop(process)


@dataclass
class Prometheus:
    base_url: str

    def query(self, expression: str, at: float) -> list[dict[str, Any]]:
        return self._get("query", {"query": expression, "time": f"{at:.3f}"})

    def query_range(self, expression: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        parameters = {"query": expression, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        return self._get("query_range", parameters)

    def _get(self, endpoint: str, parameters: dict[str, str]) -> list[dict[str, Any]]:
        url = f"{self.base_url}/api/v1/{endpoint}?{urllib.parse.urlencode(parameters)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            answer = json.load(response)
        if answer["status"] != "success":
            raise RuntimeError(f"{parameters['query']}: {answer}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


@contextlib.contextmanager
def prometheus(workdir: Path, target: str) -> Iterator[Prometheus]:
    """A real Prometheus on loopback: scrapes ``target`` as app=APP, evaluates the SLO rules, every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit(
            "prometheus is not installed (Debian: apt-get install --no-install-recommends prometheus)"
        )
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in SLO_RULES],
        "scrape_configs": [
            {"job_name": APP, "static_configs": [{"targets": [target], "labels": {"app": APP}}]}
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (workdir / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/-/ready", process, 30, "Prometheus")
        yield Prometheus(f"http://127.0.0.1:{port}")
    finally:
        stop(process)


class Locker:
    """Holds SQLite's write lock from a connection of its own: for half of every second, or throughout."""

    def __init__(self, database: Path) -> None:
        self._database = database
        self.mode = "none"
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Locker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        connection = sqlite3.connect(self._database, timeout=30, isolation_level=None)
        try:
            while not self._stopped.is_set():
                mode = self.mode
                if mode == "none":
                    time.sleep(0.05)
                    continue
                connection.execute("BEGIN IMMEDIATE")
                try:
                    if mode == "half":
                        self._stopped.wait(0.5)
                    else:  # held until the phase ends: the service's writer never gets it
                        while self.mode == "full" and not self._stopped.wait(0.05):
                            pass
                finally:
                    connection.execute("ROLLBACK")
                if mode == "half":
                    self._stopped.wait(0.5)
        finally:
            connection.close()


def user_name(index: int) -> str:
    """Letters only, as usernames must be: 0 -> "aaaa", 123 -> "abcd"."""
    return "".join(chr(ord("a") + int(digit)) for digit in f"{index:04d}")


@dataclass
class Tally:
    by_kind_and_status: Counter[tuple[str, int]] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        return [
            f"{kind} {status}: {count}" for (kind, status), count in sorted(self.by_kind_and_status.items())
        ]


async def one_request(
    session: aiohttp.ClientSession, base_url: str, kind: str, number: int, tally: Tally
) -> None:
    name = user_name(number % KNOWN_USERS)
    try:
        if kind == "get":
            response = await session.get(f"{base_url}/hello/Known{name}")
        elif kind == "get_unknown":
            response = await session.get(f"{base_url}/hello/Unknown{name}")
        else:
            body = '{"dateOfBirth": "1990-05-17"}' if kind == "put" else '{"dateOfBirth": "soon"}'
            response = await session.put(
                f"{base_url}/hello/Known{name}", data=body, headers={"Content-Type": "application/json"}
            )
        async with response:
            await response.read()
            tally.by_kind_and_status[(kind, response.status)] += 1
    except (aiohttp.ClientError, TimeoutError):
        tally.by_kind_and_status[(kind, 0)] += 1


async def drive(base_url: str, locker: Locker, scale: float) -> tuple[list[tuple[str, float, float]], Tally]:
    """Open-loop load through the phases: each request starts on its own schedule (Poisson arrivals),
    whatever the earlier ones are doing. Returns the phases' wall-clock spans and the answers."""
    tally = Tally()
    spans: list[tuple[str, float, float]] = []
    randomness = random.Random(20)
    tasks: set[asyncio.Task[None]] = set()
    number = 0
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        # The known users first, so that GETs of them answer 200.
        for index in range(KNOWN_USERS):
            name = user_name(index)
            body = '{"dateOfBirth": "1990-05-17"}'
            headers = {"Content-Type": "application/json"}
            async with session.put(f"{base_url}/hello/Known{name}", data=body, headers=headers) as response:
                if response.status != 204:
                    raise SystemExit(f"seeding answered {response.status}")
        total_rate = sum(RATES.values())
        kinds, weights = list(RATES), list(RATES.values())
        for phase, seconds, lock in PHASES:
            locker.mode = lock
            started = time.time()
            deadline = time.monotonic() + seconds * scale
            next_at = time.monotonic()
            while next_at < deadline:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                number += 1
                kind = randomness.choices(kinds, weights)[0]
                task = asyncio.create_task(one_request(session, base_url, kind, number, tally))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += randomness.expovariate(total_rate)
            spans.append((phase, started, time.time()))
            print(f"phase {phase!r}: {time.time() - started:.0f} s", file=sys.stderr)
        locker.mode = "none"
        await asyncio.gather(*tasks)
    return spans, tally


def slo_panels() -> list[dict[str, Any]]:
    """The dashboard's SLO panels, in order: three per objective."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [
        panel for panel in panels if any('slo="' in target["expr"] for target in panel.get("targets", []))
    ]


def alerts_fired(prometheus: Prometheus, start: float, end: float) -> list[str]:
    """The alerts the rules fired during the run (Prometheus' ALERTS series; no Alertmanager here):
    each with the minute it started and ended firing."""
    fired = []
    for series in prometheus.query_range('ALERTS{alertstate="firing"}', start, end, 1):
        labels = series["metric"]
        times = [(float(at) - start) / 60 for at, _ in series["values"]]
        tier = (
            f"{labels.get('severity', '')} {labels.get('long_window', '')}/{labels.get('short_window', '')}"
        )
        fired.append(f"{labels['alertname']} ({tier.strip()}): {times[0]:.1f} to {times[-1]:.1f}")
    return sorted(fired)


def plot(
    prometheus: Prometheus,
    spans: list[tuple[str, float, float]],
    tally: Tally,
    fired: list[str],
    output: Path,
    step: float,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    panels = slo_panels()
    rows = len(panels) // 3
    start, end = spans[0][1], spans[-1][2] + 30
    figure, axes = plt.subplots(rows, 3, figsize=(18, 3.1 * rows + 2.2), squeeze=False)
    # Lines over different windows coincide while the run is shorter than them: dashes keep each visible.
    styles = [("#1f77b4", "-", 2.2), ("#ff7f0e", "--", 1.6), ("#2ca02c", ":", 1.6)]
    for index, panel in enumerate(panels):
        axis = axes[index // 3][index % 3]
        defaults = panel["fieldConfig"]["defaults"]
        plotted = False
        for (color, style, width), target in zip(styles, panel["targets"], strict=False):
            expression = target["expr"].replace("$app", APP)
            for series in prometheus.query_range(expression, start, end, step):
                times = [(float(t) - start) / 60 for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                axis.plot(
                    times, values, color=color, linestyle=style, linewidth=width, label=target["legendFormat"]
                )
                plotted = True
        for threshold in defaults.get("thresholds", {}).get("steps", []):
            if threshold["value"] is not None:
                axis.axhline(threshold["value"], color=threshold["color"], linestyle="--", linewidth=0.8)
        for phase, begun, ended in spans[1:3]:
            axis.axvspan((begun - start) / 60, (ended - start) / 60, color="0.9", zorder=0)
            if index < 3:
                axis.text(
                    (begun - start) / 60 + 0.03,
                    0.04,
                    phase,
                    transform=axis.get_xaxis_transform(),
                    fontsize=8,
                    rotation=90,
                    va="bottom",
                    color="0.35",
                )
        if defaults.get("unit") == "percentunit":
            axis.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
        elif defaults.get("unit") == "suffix:x":
            axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
        if "max" in defaults and plotted:
            axis.set_ylim(top=defaults["max"] + 0.002 * abs(defaults["max"]))
        axis.set_title(panel["title"], fontsize=10, loc="left")
        axis.set_xlim(0, (end - start) / 60)
        axis.tick_params(labelsize=8)
        if plotted:
            axis.legend(fontsize=7, loc="best")
        else:
            axis.text(
                0.5,
                0.5,
                "no data: DURABILITY=replicated is not in this service yet",
                ha="center",
                va="center",
                transform=axis.transAxes,
                fontsize=9,
                color="0.4",
            )
        if index // 3 == rows - 1:
            axis.set_xlabel("minutes into the run", fontsize=8)
    when = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M UTC")
    figure.suptitle(
        f"hello-birthday: the dashboard's SLO rows, from a real run on loopback ({when}, "
        f"{(spans[-1][2] - start) / 60:.1f} minutes; grey: slow writes, then the database locked). "
        "Windows longer than the run cover the run only.",
        fontsize=11,
    )
    footer = ["Answers: " + ", ".join(tally.lines()), "Alerts fired (minutes into the run):"]
    footer += [f"  {line}" for line in fired] or ["  none"]
    figure.text(0.01, 0.004, "\n".join(footer), fontsize=7, color="0.3", va="bottom", family="monospace")
    figure.tight_layout(rect=(0, 0.012 * (len(footer) + 1), 1, 0.97))
    figure.savefig(output, dpi=80)
    print(f"wrote {output}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "slo-dashboard.png")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every phase's length (default 1)")
    parser.add_argument("--step", type=float, default=2.0, help="seconds between plotted points (default 2)")
    args = parser.parse_args(argv)
    if not 0.05 <= args.scale <= 2:
        parser.error("--scale must be between 0.05 and 2 (the run stays bounded)")
    with tempfile.TemporaryDirectory(prefix="slo-render-") as folder:
        workdir = Path(folder)
        with (
            s3_server(workdir) as replica_url,
            stack(workdir, replica_url) as running,
            prometheus(workdir, running.metrics_address) as server,
        ):
            with Locker(running.database) as locker:
                spans, tally = asyncio.run(drive(running.base_url, locker, args.scale))
            # Two more scrapes and evaluations, so that the last answers are in.
            time.sleep(3)
            for line in tally.lines():
                print(line, file=sys.stderr)
            at = time.time()
            for slo in OBJECTIVE_NAMES:
                left = server.query(f'slo:error_budget_remaining:ratio{{app="{APP}", slo="{slo}"}}', at)
                shown = f"{float(left[0]['value'][1]):.1%}" if left else "no data"
                print(f"{slo}: budget left over the run {shown}", file=sys.stderr)
            fired = alerts_fired(server, spans[0][1], time.time())
            for line in fired:
                print(f"fired: {line}", file=sys.stderr)
            plot(server, spans, tally, fired, args.output, args.step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
