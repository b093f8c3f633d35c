"""The alert rules (ops/prometheus/alerts.yml), checked by the real promtool and against the runbook.

promtool comes from Debian's `prometheus` package (.ci/run installs it). Without it these tests skip,
saying so, except in CI (CI=true), where they fail: CI must run them.
"""

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "ops" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "ops" / "prometheus" / "alerts_test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
SEVERITIES = {"page", "ticket"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        reason = "promtool is not installed (Debian: apt-get install --no-install-recommends prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return found


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_promtool_checks_the_rules() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout, result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", str(RULE_TESTS))
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
    assert "alertname: HelloBirthdayErrors" in result.stderr
    assert "alertname: LitestreamWalGrowing" in result.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alert has a case where it fires and one where it must stay quiet; promtool checks both."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never seen firing"
    assert names - quiet == set(), "alerts never seen quiet"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: str(rule["alert"]))
def test_every_alert_says_how_long_how_bad_what_and_where_to_look(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), "a `for:` duration (0m when immediate)"
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"].strip()
    runbook = rule["annotations"]["runbook"]
    path, _, anchor = runbook.partition("#")
    assert path == "docs/runbook.md"
    assert anchor in runbook_anchors(), f"{runbook}: no such heading in the runbook"


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
