"""Every metric the alert rules and the dashboard read is really exported.

A whole stack (supervisor, Litestream, gunicorn, a local S3 server) serves some requests and uploads
to the store; the service's metrics port (its own series, then Litestream's) is scraped. Each metric name in
ops/prometheus/alerts.yml and ops/grafana/hello-birthday.json must be one of the sample names scraped,
or one of Fly's built-in series listed below from Fly's documentation: Fly's Prometheus publishes those
itself, and no stack here can.

What the rules do not read, and why: litestream_checkpoint_error_count and
litestream_replica_operation_errors_total exist only from a first error on (increase() cannot see that
first one), and the second counts only failed batch deletes, not failed uploads (the second drill here
shows an upload outage counts nothing).
"""

import json
import re
import time
import urllib.request

import pytest
import yaml

from tests.drills.stack import Machine, S3Server
from tests.promql import metric_names
from tests.support import ROOT, get_birthday, put_birthday, wait_until

RULES = ROOT / "ops" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "hello-birthday.json"

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


def rule_expressions() -> list[str]:
    document = yaml.safe_load(RULES.read_text())
    return [str(rule["expr"]) for group in document["groups"] for rule in group["rules"]]


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
    """metric name -> where it is used ("alerts.yml", "hello-birthday.json")."""
    used: dict[str, set[str]] = {}
    for source, expressions in (
        ("alerts.yml", rule_expressions()),
        ("hello-birthday.json", dashboard_expressions()),
    ):
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
    assert not {"sum", "rate", "histogram_quantile", "le", "app", "by"} & used.keys()


@pytest.mark.slow
def test_every_metric_in_the_rules_and_dashboard_is_exported(machine: Machine) -> None:
    stack = machine.start()
    metrics_url = f"http://127.0.0.1:{stack.env['METRICS_PORT']}/metrics"
    assert put_birthday(stack.base_url, "Alice") == 204
    assert get_birthday(stack.base_url, "Alice")[0] == 200
    assert get_birthday(stack.base_url, "Nobody")[0] == 404

    exported: set[str] = set()

    def uploaded() -> bool:
        exported.update(scrape(metrics_url))
        return "litestream_replica_operation_total" in exported

    wait_until(uploaded, timeout=30, what="Litestream's first upload did not show in the metrics")

    used = names_used()
    unknown = {name: sorted(sources) for name, sources in used.items() if name not in exported | fly_series()}
    assert unknown == {}, f"not exported by the stack, nor a documented Fly series: {unknown}"
    # Fly's names come from Fly alone: none of the stack's own series hides behind the list.
    assert not {name for name in used if not name.startswith("fly_")} & fly_series()


@pytest.mark.slow
def test_an_upload_outage_shows_as_the_replication_lag_alert_reads_it(
    machine: Machine, s3_server: S3Server
) -> None:
    """LitestreamReplicationLag's premise, on the real Litestream: with the store away, the local
    transaction id rises while the PUT count stands still (Litestream 0.5.17 counts no failed upload);
    once the store is back, uploads resume."""
    stack = machine.start()
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
        # The point: Litestream tries to upload every second, so three seconds without a PUT counted.
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
