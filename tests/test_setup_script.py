"""scripts/setup.sh: provisions an environment, and a second run creates nothing.

flyctl cannot reach Fly.io from here, so, as in tests/test_deploy_script.py, a stand-in ``fly`` goes
first on PATH: tests/fakes/flyctl. Here it keeps an account's state in a JSON file beside it (apps,
volumes, buckets, secrets) and answers with flyctl's shapes, taken from its source: ``apps list
--json`` prints fly-go's ``App`` (GraphQL, Go field names: ``Name``, ``Status``), ``volumes list
--json`` fly-go's ``Volume`` (``id``, ``name``, ``state``, ``size_gb``, ``region``), ``secrets list
--json`` ``name``/``digest``/``status``, ``storage list`` a table only. ``storage create --app`` sets
the five secrets Tigris gives the app, and refuses a second bucket for one app, as flyctl does.
``volumes create`` without ``--yes`` fails, as flyctl's confirmation prompt does without a terminal.
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, install_fake_fly

SETUP = ROOT / "scripts" / "setup.sh"
MUTATING = {("apps", "create"), ("volumes", "create"), ("storage", "create"), ("secrets", "set")}


@dataclass
class Account:
    """The stand-in flyctl's folder, holding the account's state and every call made."""

    bin: Path

    def state(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.bin / "state.json").read_text())
        return document

    def set_state(self, state: dict[str, Any]) -> None:
        (self.bin / "state.json").write_text(json.dumps(state))

    def calls(self) -> list[list[str]]:
        path = self.bin / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def changes(self) -> list[list[str]]:
        return [call for call in self.calls() if tuple(call[:2]) in MUTATING]

    def forget_calls(self) -> None:
        (self.bin / "calls.jsonl").unlink(missing_ok=True)

    def setup(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        environ = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_FLY_HOME": str(self.bin),
            **env,
        }
        for name in ("FLY", "FLY_ORG", "LITESTREAM_HEARTBEAT_URL"):
            if name not in env:
                environ.pop(name, None)
        return subprocess.run(
            [str(SETUP), *args], env=environ, capture_output=True, text=True, timeout=60, check=False
        )


@pytest.fixture
def account(tmp_path: Path) -> Account:
    stand_in = Account(install_fake_fly(tmp_path / "bin"))
    stand_in.set_state({"apps": [], "volumes": [], "buckets": [], "secrets": {}})
    return stand_in


REPLICA = "s3://hello-birthday-staging-replica/hello.db?endpoint=https://fly.storage.tigris.dev&region=auto"


def test_staging_from_nothing_then_a_second_run_creates_nothing(account: Account) -> None:
    first = account.setup("staging")

    assert first.returncode == 0, first.stdout + first.stderr
    state = account.state()
    assert state["apps"] == ["hello-birthday-staging"]
    (volume,) = state["volumes"]
    assert (volume["app"], volume["name"], volume["region"], volume["size_gb"]) == (
        "hello-birthday-staging",
        "hello_data",
        "ams",
        1,
    )
    assert volume["snapshot_retention"] == 14  # fly.toml's [[mounts]] snapshot_retention
    assert state["buckets"] == [{"name": "hello-birthday-staging-replica", "app": "hello-birthday-staging"}]
    secrets = state["secrets"]["hello-birthday-staging"]
    assert secrets["REPLICA_URL"] == REPLICA
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secrets)
    # Each change is printed as it runs; REPLICA_URL is staged (no Machine restarts for it).
    out = first.stdout
    assert "app hello-birthday-staging: missing, running: fly apps create hello-birthday-staging" in out
    assert "volume hello_data of hello-birthday-staging: missing, running: fly volumes create" in out
    assert (
        "fly storage create --app hello-birthday-staging --name hello-birthday-staging-replica --yes" in out
    )
    assert "secret REPLICA_URL: missing, running: fly secrets set --stage" in out
    assert "done: created 4" in out
    assert "metrics token: none needed" in out

    account.forget_calls()
    second = account.setup("staging")

    assert second.returncode == 0, second.stdout + second.stderr
    assert account.changes() == []
    assert account.state() == state
    assert "done: created 0 (nothing), found 4 already there" in second.stdout
    for found in (
        "app hello-birthday-staging: found (pending), kept",
        "volume hello_data of hello-birthday-staging: found (vol_0001 in ams, 1 GB), kept",
        "bucket hello-birthday-staging-replica: found",
        "secret REPLICA_URL: found",
    ):
        assert found in second.stdout, second.stdout


def test_production_is_the_app_fly_toml_names_and_stays_apart_from_staging(account: Account) -> None:
    assert account.setup("staging").returncode == 0
    result = account.setup("production")

    assert result.returncode == 0, result.stdout + result.stderr
    state = account.state()
    assert state["apps"] == ["hello-birthday-staging", "hello-birthday"]
    assert {(v["app"], v["name"]) for v in state["volumes"]} == {
        ("hello-birthday-staging", "hello_data"),
        ("hello-birthday", "hello_data"),
    }
    assert {b["name"] for b in state["buckets"]} == {
        "hello-birthday-staging-replica",
        "hello-birthday-replica",
    }
    assert state["secrets"]["hello-birthday"]["REPLICA_URL"].startswith("s3://hello-birthday-replica/")
    assert state["secrets"]["hello-birthday-staging"]["REPLICA_URL"] == REPLICA


def test_a_half_done_environment_is_completed_and_what_exists_is_kept(account: Account) -> None:
    # An earlier run stopped after the app and its volume (say, the bucket step failed).
    assert account.setup("staging").returncode == 0
    state = account.state()
    state["buckets"] = []
    state["secrets"]["hello-birthday-staging"] = {}
    account.set_state(state)
    account.forget_calls()

    result = account.setup("staging")

    assert result.returncode == 0, result.stdout + result.stderr
    assert [call[:2] for call in account.changes()] == [["storage", "create"], ["secrets", "set"]]
    assert (
        "done: created 2 (bucket hello-birthday-staging-replica, secret REPLICA_URL), found 2"
        in result.stdout
    )


def test_dry_run_shows_the_commands_and_changes_nothing(account: Account) -> None:
    result = account.setup("--dry-run", "staging")

    assert result.returncode == 0, result.stdout + result.stderr
    assert account.changes() == []
    assert account.state()["apps"] == []
    lines = [line for line in result.stdout.splitlines() if "would run:" in line]
    assert [line.split("would run: ")[1] for line in lines] == [
        "fly apps create hello-birthday-staging --org personal",
        "fly volumes create hello_data --app hello-birthday-staging --region ams --size 1 "
        "--snapshot-retention 14 --yes",
        "fly storage create --app hello-birthday-staging --name hello-birthday-staging-replica --yes",
        f"fly secrets set --stage --app hello-birthday-staging 'REPLICA_URL={REPLICA}'",
    ]
    assert "done: would create 4" in result.stdout


def test_an_unknown_environment_is_refused_before_any_fly_call(account: Account) -> None:
    for args in (("prod",), ("Staging",), ()):
        result = account.setup(*args)
        assert result.returncode == 2, args
        assert account.calls() == []
    assert "unknown environment 'prod': give one of staging, production" in account.setup("prod").stderr


def test_a_bucket_without_credentials_stops_with_what_to_do(account: Account) -> None:
    assert account.setup("staging").returncode == 0
    state = account.state()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        del state["secrets"]["hello-birthday-staging"][name]
    account.set_state(state)

    result = account.setup("staging")

    assert result.returncode == 1
    last = result.stdout.strip().splitlines()[-1]
    assert "bucket hello-birthday-staging-replica exists, but hello-birthday-staging has no" in last
    assert "fly secrets set --stage --app hello-birthday-staging AWS_ACCESS_KEY_ID=..." in last


def test_the_heartbeat_url_is_staged_when_given_and_never_printed(account: Account) -> None:
    url = "http://127.0.0.1:9/ping/0f9e-secret-token"
    result = account.setup("staging", LITESTREAM_HEARTBEAT_URL=url)

    assert result.returncode == 0, result.stdout + result.stderr
    assert account.state()["secrets"]["hello-birthday-staging"]["LITESTREAM_HEARTBEAT_URL"] == url
    assert "secret-token" not in result.stdout + result.stderr
    assert "LITESTREAM_HEARTBEAT_URL=<LITESTREAM_HEARTBEAT_URL>" in result.stdout


def test_two_volumes_of_the_same_name_are_not_papered_over(account: Account) -> None:
    assert account.setup("staging").returncode == 0
    state = account.state()
    state["volumes"].append({**state["volumes"][0], "id": "vol_0002", "region": "fra"})
    account.set_state(state)
    account.forget_calls()

    result = account.setup("staging")

    assert result.returncode == 1
    assert "2 volumes of that name (vol_0001 (ams), vol_0002 (fra))" in result.stdout
    assert account.changes() == []


def test_the_pipeline_reads_the_app_names_from_the_same_place() -> None:
    def name(environment: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "fly_setup.py"), "app-name", environment],
            capture_output=True,
            text=True,
            check=False,
        )

    assert name("staging").stdout.strip() == "hello-birthday-staging"
    assert name("production").stdout.strip() == "hello-birthday"
    assert name("qa").returncode == 2
