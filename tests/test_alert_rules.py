"""The alert and recording rules (ops/prometheus/), checked by the real promtool and against the runbook.

alerts.yml holds the threshold alerts; slo_requests.yml and slo_replica_lag.yml the service level
objectives (docs/slo.md): recording rules for each indicator, and multi-window, multi-burn-rate alerts.
promtool comes from Debian's `prometheus` package (.ci/run installs it). Without it these tests skip,
saying so, except in CI (CI=true), where they fail: CI must run them.
"""

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import require_tool

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "ops" / "prometheus"
RULES = OPS / "alerts.yml"
RULE_TESTS = OPS / "alerts_test.yml"
SLO_REQUESTS = OPS / "slo_requests.yml"
SLO_REPLICA_LAG = OPS / "slo_replica_lag.yml"
RULE_FILES = (RULES, SLO_REQUESTS, SLO_REPLICA_LAG)
SLO_RULE_FILES = (SLO_REQUESTS, SLO_REPLICA_LAG)
# Each test file and the rule file it loads. The SLO tests take about a minute in all: their windows
# reach 3 days, evaluated minute by minute (every 10 minutes for slo_requests_long_test.yml).
RULE_TEST_FILES = {
    RULE_TESTS: RULES,
    OPS / "slo_requests_test.yml": SLO_REQUESTS,
    OPS / "slo_requests_long_test.yml": SLO_REQUESTS,
    OPS / "slo_replica_lag_test.yml": SLO_REPLICA_LAG,
}
DASHBOARD = ROOT / "ops" / "grafana" / "hello-birthday.json"
RUNBOOK = ROOT / "docs" / "runbook.md"
SLO_DOC = ROOT / "docs" / "slo.md"
SEVERITIES = {"page", "ticket"}

# The objectives (docs/slo.md): the target over 28 days, and the alert that pages on its budget.
OBJECTIVES: dict[str, tuple[float, str]] = {
    "availability": (0.999, "HelloBirthdayAvailabilityBudgetBurn"),
    "get_latency": (0.99, "HelloBirthdayGetLatencyBudgetBurn"),
    "put_latency": (0.99, "HelloBirthdayPutLatencyBudgetBurn"),
    "confirmed_writes": (0.999, "HelloBirthdayConfirmedWritesBudgetBurn"),
    "replica_lag": (0.995, "HelloBirthdayReplicaLagBudgetBurn"),
}
# The Google SRE workbook's table ("Alerting on SLOs", multiwindow, multi-burn-rate alerts):
# long window -> (short window, burn-rate factor, severity).
BURN_RATE_TIERS: dict[str, tuple[str, float, str]] = {
    "1h": ("5m", 14.4, "page"),
    "6h": ("30m", 6.0, "page"),
    "3d": ("6h", 1.0, "ticket"),
}
# The windows each indicator is recorded over: those the alerts read, and the objective's own.
SLI_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "28d")
# Pages of the objectives counted in events also need this many bad events in their long window.
PAGE_FLOOR = 3


def promtool() -> str:
    return require_tool("promtool", "Debian: apt-get install --no-install-recommends prometheus")


def rules_of(path: Path) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def alert_rules(paths: tuple[Path, ...] = (RULES,)) -> list[dict[str, Any]]:
    return [rule for path in paths for rule in rules_of(path) if "alert" in rule]


def slo_alerts() -> list[dict[str, Any]]:
    return alert_rules(SLO_RULE_FILES)


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda path: path.name)
def test_promtool_checks_the_rules(path: Path) -> None:
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules_of(path))} rules found" in result.stdout, result.stdout


@pytest.mark.parametrize("tests", RULE_TEST_FILES, ids=lambda path: path.name)
def test_promtool_unit_tests_pass(tests: Path) -> None:
    assert yaml.safe_load(tests.read_text())["rule_files"] == [RULE_TEST_FILES[tests].name]
    result = run_promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The same tests against rules whose thresholds were loosened fail: they test the thresholds."""
    loosened = RULES.read_text().replace("> 0.01", "> 0.5").replace("> 64e6", "> 64e9")
    assert loosened != RULES.read_text()
    (tmp_path / "alerts.yml").write_text(loosened)
    shutil.copy(RULE_TESTS, tmp_path / "alerts_test.yml")
    result = run_promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode != 0, result.stdout
    assert "alertname: HelloBirthdayReplicationUnconfirmed" in result.stderr
    assert "alertname: LitestreamWalGrowing" in result.stderr


def test_the_slo_unit_tests_fail_when_a_factor_or_window_changes(tmp_path: Path) -> None:
    """slo_requests_test.yml times each 1-hour page: a lower factor fires it early, a longer window
    late, a longer short window keeps it firing after the burn. (The table test below covers all.)"""
    text = SLO_REQUESTS.read_text()
    changed = {
        # The availability page at 12x instead of 14.4x.
        'slo:sli_error:ratio_rate1h{slo="availability"} > (14.4 * 0.001)': (
            'slo:sli_error:ratio_rate1h{slo="availability"} > (12 * 0.001)'
        ),
        # The GET latency page's short window 30 minutes instead of 5.
        'slo:sli_error:ratio_rate5m{slo="get_latency"} > (14.4 * 0.01)': (
            'slo:sli_error:ratio_rate30m{slo="get_latency"} > (14.4 * 0.01)'
        ),
        # The PUT latency page's long window 2 hours instead of 1.
        'slo:sli_error:ratio_rate1h{slo="put_latency"} > (14.4 * 0.01)': (
            'slo:sli_error:ratio_rate2h{slo="put_latency"} > (14.4 * 0.01)'
        ),
    }
    for before, after in changed.items():
        assert text.count(before) == 1, before
        text = text.replace(before, after)
    (tmp_path / SLO_REQUESTS.name).write_text(text)
    shutil.copy(OPS / "slo_requests_test.yml", tmp_path)
    result = run_promtool("test", "rules", str(tmp_path / "slo_requests_test.yml"))
    assert result.returncode != 0, result.stdout
    for alert in ("Availability", "GetLatency", "PutLatency"):
        assert f"alertname: HelloBirthday{alert}BudgetBurn" in result.stderr, alert
    assert "alertname: HelloBirthdayConfirmedWritesBudgetBurn" not in result.stderr


def _window_of(record: str) -> str:
    return record.removeprefix("slo:sli_error:ratio_rate")


def test_every_objective_is_recorded_over_every_window_with_one_expression() -> None:
    """Per objective: one ratio rule per window, whose ranges are that window, all alike but for it."""
    for path in SLO_RULE_FILES:
        rules = rules_of(path)
        by_slo: dict[str, dict[str, str]] = {}
        for rule in rules:
            if rule.get("record", "").startswith("slo:sli_error:ratio_rate"):
                slo, window = rule["labels"]["slo"], _window_of(rule["record"])
                assert window not in by_slo.setdefault(slo, {}), f"{slo} {window} recorded twice"
                by_slo[slo][window] = rule["expr"]
        for slo, expressions in by_slo.items():
            assert tuple(expressions) == SLI_WINDOWS, slo
            templates = set()
            for window, expression in expressions.items():
                assert set(re.findall(r"\[(\w+)\]", expression)) == {window}, f"{slo} {window}"
                templates.add(expression.replace(f"[{window}]", "[W]"))
            assert len(templates) == 1, f"{slo}: the windows' expressions differ beyond the window"
    recorded = {
        rule["labels"]["slo"]
        for path in SLO_RULE_FILES
        for rule in rules_of(path)
        if rule.get("record", "").startswith("slo:sli_error:")
    }
    assert recorded == set(OBJECTIVES)


def test_each_objective_is_recorded_as_the_documented_target() -> None:
    for path in SLO_RULE_FILES:
        for rule in rules_of(path):
            if rule.get("record") == "slo:objective:ratio":
                slo = rule["labels"]["slo"]
                assert rule["expr"].strip() == f"vector({OBJECTIVES[slo][0]:g})", slo


def _rule_id(rule: dict[str, Any]) -> str:
    return "-".join(str(part) for part in (rule["alert"], rule["labels"].get("long_window")) if part)


# One window's comparison in a burn-rate alert: slo:sli_error:ratio_rate1h{slo="x"} > (14.4 * 0.001).
_BURN = re.compile(
    r'slo:sli_error:ratio_rate(?P<window>\w+)\{slo="(?P<slo>\w+)"\}'
    r" > \((?P<factor>[\d.]+) \* (?P<budget>[\d.]+)\)"
)


@pytest.mark.parametrize("rule", slo_alerts(), ids=_rule_id)
def test_each_burn_rate_alert_has_the_windows_and_factor_of_the_table(rule: dict[str, Any]) -> None:
    """A changed window or factor fails here, whatever the promtool tests happen to catch."""
    labels = rule["labels"]
    long_window, short_window = labels["long_window"], labels["short_window"]
    assert long_window in BURN_RATE_TIERS
    short, factor, severity = BURN_RATE_TIERS[long_window]
    assert (short_window, labels["severity"]) == (short, severity)
    found = [match.groupdict() for match in _BURN.finditer(rule["expr"])]
    assert [item["window"] for item in found] == [long_window, short_window]
    (slo,) = {item["slo"] for item in found}
    objective, alert = OBJECTIVES[slo]
    assert rule["alert"] == alert
    for item in found:
        assert float(item["factor"]) == factor
        assert float(item["budget"]) == pytest.approx(1 - objective)
    # The alert's value is the burn rate over the long window: the expression ends dividing by the budget.
    assert rule["expr"].rstrip().endswith(f") / {found[0]['budget']}")
    floor = (
        f'slo:sli_error:ratio_rate{long_window}{{slo="{slo}"}} * '
        f'slo:sli_events:increase{long_window}{{slo="{slo}"}} >= {PAGE_FLOOR}'
    )
    expects_floor = severity == "page" and slo != "replica_lag"
    assert (floor in rule["expr"]) == expects_floor, (
        "the floor of bad events belongs to the pages of event counts"
    )
    summary = rule["annotations"]["summary"]
    assert f"over {long_window}" in summary and f"alert at {factor:g}x" in summary
    assert f'slo:error_budget_remaining:ratio{{app="%s", slo="{slo}"}}' in summary, "how much budget is left"


def test_every_objective_has_the_three_tiers() -> None:
    tiers: dict[str, list[str]] = {}
    for rule in slo_alerts():
        tiers.setdefault(rule["alert"], []).append(rule["labels"]["long_window"])
    assert tiers == {alert: list(BURN_RATE_TIERS) for _, alert in OBJECTIVES.values()}


def test_the_dashboard_shows_the_objectives_and_factors_of_the_rules() -> None:
    """The SLO rows: an SLI, budget and burn-rate panel per objective, with the rules' numbers."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    for slo, (objective, _) in OBJECTIVES.items():
        mine = [
            panel for panel in panels if any(f'slo="{slo}"' in t["expr"] for t in panel.get("targets", []))
        ]
        kinds = [panel["title"].rsplit(": ", 1)[1] for panel in mine]
        assert kinds == ["SLI", "error budget left (28 days)", "burn rate"], slo
        sli, budget, burn = mine
        steps = sli["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[-1]["value"] == objective, f"{slo}: the SLI panel's line is the objective"
        assert budget["targets"][0]["expr"] == f'slo:error_budget_remaining:ratio{{app="$app", slo="{slo}"}}'
        windows = [re.findall(r"ratio_rate(\w+)", target["expr"]) for target in burn["targets"]]
        assert windows == [[window] for window in BURN_RATE_TIERS], slo
        for target in burn["targets"]:
            assert float(target["expr"].rsplit(" / ", 1)[1]) == pytest.approx(1 - objective), slo
        factors = {step["value"] for step in burn["fieldConfig"]["defaults"]["thresholds"]["steps"]} - {None}
        assert factors == {factor for _, factor, _ in BURN_RATE_TIERS.values()}, slo


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alert has a case where it fires and one where it must stay quiet; promtool checks both.
    The burn-rate alerts are counted per tier (long window): each tier fires, and is quiet, somewhere."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for tests, rules in RULE_TEST_FILES.items():
        names = {rule["alert"]: rule for rule in alert_rules((rules,))}
        tiered = {rule["alert"] for rule in alert_rules((rules,)) if "long_window" in rule["labels"]}
        for case in yaml.safe_load(tests.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                name = check["alertname"]
                assert name in names, f"{tests.name}: a test of {name}, which {rules.name} does not have"
                if name not in tiered:
                    (firing if check.get("exp_alerts") else quiet).add(name)
                    continue
                seen = {alert["exp_labels"]["long_window"] for alert in check.get("exp_alerts") or []}
                firing.update(f"{name}/{window}" for window in seen)
                quiet.update(f"{name}/{window}" for window in set(BURN_RATE_TIERS) - seen)
    expected = {rule["alert"] for rule in alert_rules()} | {
        f"{rule['alert']}/{rule['labels']['long_window']}" for rule in slo_alerts()
    }
    assert expected - firing == set(), "alerts never seen firing"
    assert expected - quiet == set(), "alerts never seen quiet"


@pytest.mark.parametrize("rule", alert_rules(RULE_FILES), ids=_rule_id)
def test_every_alert_says_how_long_how_bad_what_and_where_to_look(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), "a `for:` duration (0m when immediate)"
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"].strip()
    runbook = rule["annotations"]["runbook"]
    path, _, anchor = runbook.partition("#")
    assert path == "docs/runbook.md"
    assert anchor in runbook_anchors(), f"{runbook}: no such heading in the runbook"


def test_every_new_alert_has_a_runbook_section_of_its_own() -> None:
    """The burn-rate alerts and HelloBirthdayReplicationUnconfirmed each have a heading named after them."""
    names = {rule["alert"] for rule in slo_alerts()} | {"HelloBirthdayReplicationUnconfirmed"}
    for name in names:
        assert name.lower() in runbook_anchors(), name


def test_the_slo_document_states_every_objective_and_alert() -> None:
    text = SLO_DOC.read_text()
    for slo, (objective, alert) in OBJECTIVES.items():
        assert f"`{slo}`" in text, slo
        assert f"{objective:.1%}".replace(".0%", "%") in text, slo
        assert alert in text, alert


def test_the_down_alert_names_the_app_of_fly_toml() -> None:
    """absent() cannot be split by app, so HelloBirthdayDown names it: the same name as fly.toml's."""
    app = tomllib.loads((ROOT / "fly.toml").read_text())["app"]
    (down,) = [rule for rule in alert_rules() if rule["alert"] == "HelloBirthdayDown"]
    assert f'app="{app}"' in down["expr"]


def runbook_anchors() -> set[str]:
    """The anchors GitHub makes of the runbook's headings: lower case, punctuation dropped, - for space."""
    anchors, fenced = set(), False
    for line in RUNBOOK.read_text().splitlines():
        fenced ^= line.startswith("```")  # a shell comment in a code block is no heading
        if not fenced and (match := re.match(r"#{1,6} (.+)", line)):
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return anchors
