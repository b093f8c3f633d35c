"""Container drill: the production image replicates to S3, stops cleanly, and restores on an empty volume.

What Fly.io does to the Machine, done here with Docker: build the image from the Dockerfile, run it with
a root-owned empty folder as its volume (as Fly mounts one), write a user, stop it with SIGTERM (as
`docker stop` and Fly's kill_signal do) and check it exits 0, then start a new container on a new empty
volume: start.sh restores the user from the replica, and the service answers for it.

The S3 store is the moto server of the s3_server fixture (tests/drills/stack.py) on 127.0.0.1; the
containers use the host's network so that they reach it, and bind every port to 127.0.0.1.

Needs a Docker engine. Where none answers the drill skips, unless REQUIRE_DOCKER=1 (CI sets it in
.ci/run, which installs and starts one), where it fails instead. The base image is CONTAINER_BASE_IMAGE
when set (python:3.12-slim where a registry is reachable); otherwise local/python:bookworm, built from
Debian's packages by scripts/build-base-image.sh when missing.
"""

import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from tests.drills.stack import S3Server, record_figures
from tests.support import ROOT, free_port, http_status, put_birthday, wait_until

IMAGE = "hello-birthday:drill"
LOCAL_BASE = "local/python:bookworm"
BUILD_TIMEOUT = 900.0
READY_TIMEOUT = 120.0
# Fly's kill_timeout (fly.toml) is 60 s; give docker stop the same before it sends SIGKILL.
STOP_TIMEOUT = 60


def _docker(*args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        stdin=subprocess.DEVNULL,
    )


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("REQUIRE_DOCKER") == "1":
        pytest.fail(f"REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def docker_engine() -> None:
    if shutil.which("docker") is None:
        _unavailable("no docker command on PATH (install docker.io; .ci/run does)")
    try:
        info = _docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        _unavailable("`docker info` did not answer within 30 s")
    if info.returncode != 0:
        _unavailable(f"no Docker engine answers (`docker info`: {info.stderr.strip()[:200]})")


@pytest.fixture(scope="module")
def base_image(docker_engine: None) -> str:
    image = os.environ.get("CONTAINER_BASE_IMAGE", "")
    if image:
        return image
    if _docker("image", "inspect", LOCAL_BASE, check=False).returncode != 0 and not shutil.which(
        "mmdebstrap"
    ):
        _unavailable(f"{LOCAL_BASE} is missing and mmdebstrap is not installed to build it")
    began = time.monotonic()
    result = subprocess.run(
        [str(ROOT / "scripts" / "build-base-image.sh"), LOCAL_BASE],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"build-base-image.sh failed:\n{result.stdout}{result.stderr}"
    print(
        f"\n[container] base {LOCAL_BASE} ready in {time.monotonic() - began:.1f} s: {result.stdout.strip()}"
    )
    return LOCAL_BASE


@pytest.fixture(scope="module")
def app_image(base_image: str) -> tuple[str, float]:
    """The image built from the Dockerfile on ``base_image``, and the seconds the build took."""
    began = time.monotonic()
    result = _docker(
        "build",
        "--build-arg",
        f"BASE_IMAGE={base_image}",
        "--tag",
        IMAGE,
        str(ROOT),
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    seconds = time.monotonic() - began
    assert result.returncode == 0, f"docker build failed:\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
    return IMAGE, seconds


@dataclass
class Container:
    name: str
    port: int
    metrics_port: int
    litestream_port: int
    data_dir: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def logs(self) -> str:
        result = _docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def inspect(self, template: str) -> str:
        return _docker("inspect", "--format", template, self.name).stdout.strip()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.inspect("{{.State.Running}}") != "true":
                raise AssertionError(f"container {self.name} exited:\n{self.logs()}")
            if http_status(self.url("/readyz"), timeout=1.0) == 200:
                return
            time.sleep(0.1)  # polling: until ready, or the container exits
        raise AssertionError(f"container {self.name} was not ready within {timeout} s:\n{self.logs()}")


class Runner:
    """Starts containers of the drill image on the host's network; removes them all afterwards."""

    def __init__(self, image: str, s3: S3Server, replica_url: str) -> None:
        self.image = image
        self.s3 = s3
        self.replica_url = replica_url
        self.started: list[Container] = []

    def run(self, data_dir: Path) -> Container:
        data_dir.mkdir(parents=True)
        container = Container(
            name=f"hello-drill-{uuid.uuid4().hex[:10]}",
            port=free_port(),
            metrics_port=free_port(),
            litestream_port=free_port(),
            data_dir=data_dir,
        )
        env = {
            # Loopback only: with the host's network, 0.0.0.0 would open the ports to every interface.
            "HOST": "127.0.0.1",
            "PORT": str(container.port),
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": str(container.metrics_port),
            "LITESTREAM_METRICS_ADDR": f"127.0.0.1:{container.litestream_port}",
            "REPLICA_URL": self.replica_url,
            **self.s3.credentials,
        }
        self.started.append(container)
        _docker(
            "run",
            "--detach",
            "--name",
            container.name,
            "--init",
            "--network",
            "host",
            "--volume",
            f"{data_dir}:/data",
            *[arg for key, value in env.items() for arg in ("--env", f"{key}={value}")],
            self.image,
        )
        return container

    def remove_all(self) -> None:
        for container in self.started:
            _docker("rm", "--force", "--volumes", container.name, check=False)


@pytest.fixture
def runner(app_image: tuple[str, float], s3_server: S3Server, replica_url: str) -> Iterator[Runner]:
    started = Runner(app_image[0], s3_server, replica_url)
    try:
        yield started
    finally:
        started.remove_all()


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        status: int = response.status
        return status, response.read().decode()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_container_replicates_stops_cleanly_and_restores_on_an_empty_volume(
    runner: Runner, app_image: tuple[str, float], tmp_path: Path
) -> None:
    # A root-owned empty folder, as Fly mounts a new volume: the entrypoint must hand it to `app`.
    first = runner.run(tmp_path / "volume-1")
    began = time.monotonic()
    first.wait_ready()
    first_ready = time.monotonic() - began

    # Only docker-init (the --init process, PID 1) runs as root; Litestream and gunicorn do not.
    # docker top needs a pid column in the ps format.
    processes = _docker("top", first.name, "-eo", "uid,pid,comm").stdout.splitlines()[1:]
    users = {comm: uid for uid, _, comm in (line.split(None, 2) for line in processes if line.strip())}
    assert users.pop("docker-init", None) == "0", users
    assert {"litestream", "gunicorn"} <= set(users), users
    assert set(users.values()) == {"10001"}, users

    assert put_birthday(first.url(""), "Containeruser", "1985-03-04") == 204, first.logs()
    assert _get(first.url("/hello/Containeruser"))[0] == 200

    # The image's HEALTHCHECK (python urllib against /readyz) reports healthy.
    wait_until(
        lambda: first.inspect("{{.State.Health.Status}}") == "healthy",
        timeout=30,
        what=f"docker did not report {first.name} healthy:\n{first.logs()}",
        interval=0.5,
    )

    # SIGTERM, as docker stop and Fly send it: gunicorn drains, Litestream syncs, everything exits 0.
    began = time.monotonic()
    _docker("stop", "--time", str(STOP_TIMEOUT), first.name, timeout=STOP_TIMEOUT + 30)
    stop_seconds = time.monotonic() - began
    assert first.inspect("{{.State.ExitCode}}") == "0", first.logs()
    assert stop_seconds < STOP_TIMEOUT, f"docker stop needed SIGKILL:\n{first.logs()}"

    # A new Machine on a new, empty volume: start.sh restores from the replica before serving.
    second = runner.run(tmp_path / "volume-2")
    began = time.monotonic()
    second.wait_ready()
    restore_ready = time.monotonic() - began
    logs = second.logs()
    assert "restoring from" in logs, logs
    status, body = _get(second.url("/hello/Containeruser"))
    assert status == 200, logs
    assert "Containeruser" in body, body

    build_seconds = app_image[1]
    record_figures(
        "container",
        build_seconds=f"{build_seconds:.1f}",
        first_start_to_ready_seconds=f"{first_ready:.2f}",
        graceful_stop_seconds=f"{stop_seconds:.2f}",
        restore_start_to_ready_seconds=f"{restore_ready:.2f}",
    )
