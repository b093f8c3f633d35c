"""Every metric the alert rules, the SLO rules and the dashboard read is really exported.

A whole stack (supervisor, Litestream, gunicorn, a local S3 server) serves some requests and uploads
to the store; the service's metrics port (its own series, then Litestream's) is scraped. Each metric name in
ops/prometheus/alerts.yml, slo_requests.yml, slo_replica_lag.yml and ops/grafana/hello-birthday.json must
be one of the sample names scraped, one recorded by those rules, or one of Fly's built-in series listed
below from Fly's documentation: Fly's Prometheus publishes those itself, and no stack here can. The
series of DURABILITY=replicated are named below too, with why the stack here does not export them.

Then a real Prometheus (Debian's `prometheus` package, the one promtool comes from) scrapes the stack
every second and evaluates the SLO rules: every rule evaluates without error, every objective's
indicator is recorded over every window, and every query of the dashboard's SLO rows answers.

What the rules do not read, and why: litestream_checkpoint_error_count and
litestream_replica_operation_errors_total exist only from a first error on (increase() cannot see that
first one), and the second counts only failed batch deletes, not failed uploads (the second drill here
shows an upload outage counts nothing).
"""

import json
import math
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.drills.stack import S3Server, StackFactory
from tests.promql import metric_names
from tests.support import (
    ROOT,
    free_port,
    get_birthday,
    http_status,
    put_birthday,
    require_tool,
    stop_group,
    wait_until,
)

RULE_FILES = tuple(
    ROOT / "ops" / "prometheus" / name for name in ("alerts.yml", "slo_requests.yml", "slo_replica_lag.yml")
)
DASHBOARD = ROOT / "ops" / "grafana" / "hello-birthday.json"
APP = "hello-birthday"

# The series a stack exports only with DURABILITY=replicated (service/http/metrics.py), which the SLO
# rules and HelloBirthdayReplicationUnconfirmed read: the drill checks them on a replicated stack.
REPLICATED_ONLY = frozenset({"hello_replication_acks_total"})
# The objectives whose indicator reads only REPLICATED_ONLY series: nothing is recorded for them here.
REPLICATED_ONLY_SLOS = frozenset({"confirmed_writes"})
SLI_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "28d")


# Fly's built-in series, as https://fly.io/docs/metrics-and-logs/metrics/#built-in-metrics lists them
# ("Instance series", "Instance memory", "Volumes", "App", "Edge"), with the kind the page gives: a
# histogram <name> is published as <name>_bucket, <name>_sum and <name>_count; a name that itself ends
# in _count (fly_app_http_responses_count) is a counter of that name, nothing to strip.
FLY_DOCUMENTED: dict[str, str] = {
    "fly_instance_up": "gauge",  # Instance series
    "fly_instance_memory_mem_total": "gauge",  # Instance memory (bytes)
    "fly_instance_memory_mem_free": "gauge",
    "fly_instance_memory_mem_available": "gauge",
    "fly_instance_memory_swap_total": "gauge",
    "fly_instance_memory_swap_free": "gauge",
    "fly_instance_load_average": "gauge",  # Instance Load and CPU
    "fly_instance_cpu": "counter",
    "fly_instance_filesystem_blocks": "gauge",  # Instance Filesystem
    "fly_instance_filesystem_blocks_avail": "gauge",
    "fly_volume_size_bytes": "gauge",  # Volumes
    "fly_volume_used_pct": "gauge",
    "fly_app_concurrency": "gauge",  # App
    "fly_app_http_responses_count": "counter",
    "fly_app_http_response_time_seconds": "histogram",
    "fly_edge_http_responses_count": "counter",  # Edge
    "fly_edge_http_response_time_seconds": "histogram",
}


def fly_series() -> set[str]:
    """The series names Fly publishes for the documented metrics above."""
    names: set[str] = set()
    for name, kind in FLY_DOCUMENTED.items():
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return names


def rules(path: Path) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def rule_expressions(path: Path) -> list[str]:
    return [str(rule["expr"]) for rule in rules(path)]


def recorded_names() -> set[str]:
    """The series the rules record: read by other rules and the dashboard, exported by nobody."""
    return {str(rule["record"]) for path in RULE_FILES for rule in rules(path) if "record" in rule}


def slo_panel_expressions() -> dict[str, list[str]]:
    """The dashboard's SLO rows: objective -> its panels' queries (with $app)."""
    found: dict[str, list[str]] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            if match := re.search(r'slo="(\w+)"', target["expr"]):
                found.setdefault(match[1], []).append(str(target["expr"]))
    return found


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions: list[str] = []
    for panel in dashboard["panels"]:
        expressions.extend(str(target["expr"]) for target in panel.get("targets", []))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(metric, label): the metric is a selector too.
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            expressions.append(str(query).removeprefix("label_values(").rsplit(",", 1)[0])
    return expressions


def names_used() -> dict[str, set[str]]:
    """metric name -> where it is used ("alerts.yml", "slo_requests.yml", ..., "hello-birthday.json")."""
    used: dict[str, set[str]] = {}
    sources = [(path.name, rule_expressions(path)) for path in RULE_FILES]
    for source, expressions in [*sources, ("hello-birthday.json", dashboard_expressions())]:
        for expression in expressions:
            for name in metric_names(expression):
                used.setdefault(name, set()).add(source)
    return used


_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(?P<label>[A-Za-z_][A-Za-z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


def scrape_values(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """One scrape: (sample name, labels) -> value, with each name exactly as Prometheus stores it.

    Read line by line rather than with prometheus_client's parser, which renames a counter's samples
    to end in _total (Litestream's litestream_sync_error_count would become ..._count_total).
    """
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if match := _SAMPLE.match(line):
            labels = frozenset((m["label"], m["value"]) for m in _LABEL.finditer(match["labels"] or ""))
            samples[(match["name"], labels)] = float(match["value"])
    return samples


def scrape(url: str) -> set[str]:
    """The sample names of one scrape (…_bucket, …_total as exported)."""
    return {name for name, _ in scrape_values(url)}


def test_fly_histograms_are_published_as_buckets_sums_and_counts() -> None:
    series = fly_series()
    assert {"fly_app_http_response_time_seconds_bucket", "fly_app_http_response_time_seconds_count"} <= series
    assert "fly_app_http_response_time_seconds" not in series
    assert "fly_app_http_responses_count" in series and "fly_app_http_responses" not in series


def test_the_dashboard_asks_for_its_data_source_and_app() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'app="$app"' in target["expr"], f"{panel['title']}: every query is for the chosen app"


def test_rules_and_dashboard_read_what_the_runbook_promises() -> None:
    """The extractor finds the names (a broken extractor would make the drill below pass vacuously)."""
    used = names_used()
    assert {"hello_http_requests_total", "litestream_txid", "fly_volume_used_pct"} <= used.keys()
    assert "hello_http_request_duration_seconds_bucket" in used
    assert {"slo:sli_error:ratio_rate5m", "slo:error_budget_remaining:ratio"} <= used.keys()
    assert not {"sum", "rate", "histogram_quantile", "le", "app", "by", "avg_over_time"} & used.keys()


def test_every_recorded_name_read_is_recorded_by_a_rule() -> None:
    """A name with a colon is a recording rule's (Prometheus' convention): each one read is recorded."""
    read = {name for name in names_used() if ":" in name}
    assert read and read <= recorded_names(), read - recorded_names()
    assert not recorded_names() & {name for name in names_used() if ":" not in name}


def test_the_durability_series_named_are_read_and_nothing_else_is_excused() -> None:
    """The replicated-only names stay exact: each is read by a rule and is the service's own."""
    used = names_used()
    assert REPLICATED_ONLY <= used.keys()
    assert {name for name in REPLICATED_ONLY if not name.startswith("hello_")} == set()
    assert REPLICATED_ONLY_SLOS <= slo_panel_expressions().keys()


@pytest.mark.slow
def test_every_metric_in_the_rules_and_dashboard_is_exported(
    tmp_path: Path, stack_factory: StackFactory, s3_server: S3Server, replica_url: str
) -> None:
    stack = stack_factory(tmp_path / "data", replica_url=replica_url)
    metrics_url = f"http://127.0.0.1:{stack.env['METRICS_PORT']}/metrics"
    assert put_birthday(stack.base_url, "Alice") == 204
    assert get_birthday(stack.base_url, "Alice")[0] == 200
    assert get_birthday(stack.base_url, "Nobody")[0] == 404

    exported: set[str] = set()

    def uploaded() -> bool:
        exported.update(scrape(metrics_url))
        return "litestream_replica_operation_total" in exported

    wait_until(uploaded, timeout=30, what="Litestream's first upload did not show in the metrics")

    # The replicated-only series, from a stack in that mode on a replica path of its own.
    assert stack.terminate() == 0, stack.logs()
    replicated = stack_factory(
        tmp_path / "replicated",
        replica_url=s3_server.replica_url(f"metrics-replicated-{tmp_path.name}"),
        extra_env={"DURABILITY": "replicated"},
    )
    assert put_birthday(replicated.base_url, "Bob") == 204
    exported_replicated = scrape(f"http://127.0.0.1:{replicated.env['METRICS_PORT']}/metrics")
    assert REPLICATED_ONLY <= exported_replicated

    used = names_used()
    known = exported | fly_series() | recorded_names() | REPLICATED_ONLY
    unknown = {name: sorted(sources) for name, sources in used.items() if name not in known}
    assert unknown == {}, f"not exported by the stack, recorded, nor a documented Fly series: {unknown}"
    # Fly's names come from Fly alone: none of the stack's own series hides behind the list.
    assert not {name for name in used if not name.startswith("fly_")} & fly_series()
    # Local mode exports no sample of the replicated-only series (else the exemption is stale).
    assert not REPLICATED_ONLY & exported


def prometheus_binary() -> str:
    return require_tool("prometheus", "Debian: apt-get install --no-install-recommends prometheus")


@contextmanager
def prometheus(tmp_path: Path, target: str, rule_files: tuple[Path, ...]) -> Iterator[str]:
    """A real Prometheus on a free loopback port, scraping ``target`` every second as app=APP and
    evaluating ``rule_files`` every second; yields its base URL, and is stopped at the end."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {"job_name": APP, "static_configs": [{"targets": [target], "labels": {"app": APP}}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_status(f"{base}/-/ready") == 200, timeout=30, what="Prometheus did not start")
        yield base
    finally:
        stop_group(process, signal.SIGTERM)


def query(base: str, expression: str) -> list[dict[str, Any]]:
    """An instant query through Prometheus' HTTP API: its result vector."""
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


@pytest.mark.slow
def test_the_slo_rules_and_panels_evaluate_on_a_running_stack(
    tmp_path: Path, stack_factory: StackFactory, s3_server: S3Server, replica_url: str
) -> None:
    stack = stack_factory(tmp_path / "data", replica_url=replica_url)
    target = f"127.0.0.1:{stack.env['METRICS_PORT']}"
    slo_files = tuple(path for path in RULE_FILES if path.name.startswith("slo_"))
    with prometheus(tmp_path, target, slo_files) as base:
        # Requests while it scrapes, so that every rate has two samples that differ: PUTs (204), GETs
        # of a known user (200) and of an unknown one (404), and a refused body (400).
        deadline = time.monotonic() + 6
        number = 0
        while time.monotonic() < deadline:
            number += 1
            name = "Slo" + "".join(chr(ord("a") + int(digit)) for digit in str(number))
            assert put_birthday(stack.base_url, name) == 204
            assert get_birthday(stack.base_url, name)[0] == 200
            assert get_birthday(stack.base_url, "Nobody")[0] == 404
            assert put_birthday(stack.base_url, name, date_of_birth="not a date") == 400
            time.sleep(0.1)

        expected = set(slo_panel_expressions()) - REPLICATED_ONLY_SLOS

        def recorded() -> bool:
            # A number in every window: an evaluation that saw a single scrape of a series gives 0/0
            # (NaN) until the next one.
            for window in SLI_WINDOWS:
                items = query(base, f'slo:sli_error:ratio_rate{window}{{app="{APP}"}}')
                values = {item["metric"]["slo"]: float(item["value"][1]) for item in items}
                if not expected <= values.keys() or any(math.isnan(values[slo]) for slo in expected):
                    return False
            return True

        wait_until(recorded, timeout=30, what="the SLO rules recorded no indicator for every objective")
        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as response:
            groups = json.load(response)["data"]["groups"]
        unhealthy = [
            (rule["name"], rule.get("lastError"))
            for group in groups
            for rule in group["rules"]
            if rule["health"] != "ok"
        ]
        assert unhealthy == []
        assert sum(len(group["rules"]) for group in groups) == sum(len(rules(path)) for path in slo_files)

        for slo in expected:
            for window in SLI_WINDOWS:
                (item,) = query(base, f'slo:sli_error:ratio_rate{window}{{app="{APP}", slo="{slo}"}}')
                assert 0 <= float(item["value"][1]) <= 1, (slo, window, item)
            (budget,) = query(base, f'slo:error_budget_remaining:ratio{{app="{APP}", slo="{slo}"}}')
            assert float(budget["value"][1]) <= 1, (slo, budget)
        for slo, expressions in slo_panel_expressions().items():
            for expression in expressions:
                answered = query(base, expression.replace("$app", APP))
                if slo in REPLICATED_ONLY_SLOS:
                    assert answered == [], f"{expression}: DURABILITY=replicated data in local mode?"
                else:
                    assert len(answered) == 1, f"{expression}: {answered}"


@pytest.mark.slow
def test_an_upload_outage_shows_as_the_replica_lag_indicator_reads_it(
    tmp_path: Path, stack_factory: StackFactory, s3_server: S3Server, replica_url: str
) -> None:
    """The replica-lag indicator's premise (hello:replica_behind:bool in slo_replica_lag.yml), on the
    real Litestream: with the store away, the local transaction id rises while the PUT count stands
    still (Litestream 0.5.17 counts no failed upload); once the store is back, uploads resume."""
    stack = stack_factory(tmp_path / "data", replica_url=replica_url)
    metrics_url = f"http://127.0.0.1:{stack.env['METRICS_PORT']}/metrics"

    def txid() -> float:
        return sum(
            value for (name, _), value in scrape_values(metrics_url).items() if name == "litestream_txid"
        )

    def puts() -> float:
        return sum(
            value
            for (name, labels), value in scrape_values(metrics_url).items()
            if name == "litestream_replica_operation_total" and ("operation", "PUT") in labels
        )

    wait_until(lambda: puts() > 0, timeout=30, what="Litestream's first upload did not show")
    s3_server.stop()
    try:
        txid_before, puts_before = txid(), puts()
        for number in range(3):
            assert put_birthday(stack.base_url, f"Outage{chr(ord('a') + number)}") == 204
        wait_until(lambda: txid() > txid_before, timeout=15, what="the transaction id did not rise")
        # Litestream tries to upload every second: three seconds without a PUT counted.
        time.sleep(3)
        assert puts() == puts_before
        errors = [
            name
            for name, _ in scrape_values(metrics_url)
            if name.startswith("litestream_replica_operation_err")
        ]
        assert errors == [], "Litestream now counts failed uploads: LitestreamErrors can use them"
    finally:
        s3_server.start()
    wait_until(
        lambda: puts() > puts_before, timeout=60, what="uploads did not resume after the store came back"
    )
