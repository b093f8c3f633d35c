"""The PromQL name extractor (tests/promql.py) that the metrics agreement drill relies on."""

import pytest

from tests.promql import PromQLSyntaxError, metric_names


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ("up", {"up"}),
        ("hello_build_info == 1", {"hello_build_info"}),
        ('hello_http_requests_total{route="/readyz",status="503"}', {"hello_http_requests_total"}),
        ("rate(litestream_sync_error_count[5m])", {"litestream_sync_error_count"}),
        # Functions, aggregations and label lists are not metrics; le, app and operation are labels.
        (
            "histogram_quantile(0.99, sum by (le, app) (rate(hello_http_request_duration_seconds_bucket"
            '{route!~"connection|parser"}[5m])))',
            {"hello_http_request_duration_seconds_bucket"},
        ),
        (
            "sum(rate(hello_db_query_duration_seconds_sum[5m])) without (operation)"
            " / sum(rate(hello_db_query_duration_seconds_count[5m])) without (operation)",
            {"hello_db_query_duration_seconds_sum", "hello_db_query_duration_seconds_count"},
        ),
        # Binary operators spelled as words, vector matching, bool, offset, numbers with exponents.
        (
            "a_total > bool 64e6 and on (app) group_left (region) b_info unless c offset 1h30m or d",
            {"a_total", "b_info", "c", "d"},
        ),
        ("fly_volume_used_pct > 0x10 or fly_instance_up < .5e-1", {"fly_volume_used_pct", "fly_instance_up"}),
        # A label value that looks like a metric name, inside a string, is not one.
        ('absent(hello_build_info{app="litestream_txid", x=~"a(b"})', {"hello_build_info"}),
        ("max_over_time(litestream_txid[10m:30s])", {"litestream_txid"}),
        ('{__name__="hello_users_stored", app="x"}', {"hello_users_stored"}),
        ("changes(hello_process_start_time_seconds[30m]) >= 3", {"hello_process_start_time_seconds"}),
        # Grafana's variables are replaced before the query is sent; their names are not metrics.
        (
            'sum by (route) (rate(hello_http_requests_total{app="$app", instance=~"${instance:regex}"}'
            "[$__rate_interval]))",
            {"hello_http_requests_total"},
        ),
        ("sum(rate(x[$__rate_interval])) * $factor", {"x"}),
        ("vector(1)", set()),
    ],
)
def test_metric_names(expression: str, names: set[str]) -> None:
    assert metric_names(expression) == names


@pytest.mark.parametrize("expression", ["sum(rate(x[5m])", 'x{a="b"', "x[5m)", "x)"])
def test_unbalanced_brackets_are_refused(expression: str) -> None:
    with pytest.raises(PromQLSyntaxError):
        metric_names(expression)
