"""scripts/deploy.sh: preflight, rolling deploy, smoke check, automatic roll back.

flyctl cannot reach Fly.io from here, so a stand-in ``fly`` goes first on PATH: tests/fakes/flyctl,
which records every call and answers ``secrets list``, ``releases``, ``machine list`` and ``deploy`` the
way flyctl does (the same JSON fields; ``machine list --json`` prints fly-go's ``Machine``, see
``fly_machine`` below). The smoke target is real: an HTTP server on 127.0.0.1 that serves the image
the stand-in last "deployed", answering like the service when that image is good and with 503 on
/readyz when it is the bad one. So the script's real HTTP checks decide whether it rolls back.
"""

import json
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support import ROOT, install_fake_fly

DEPLOY = ROOT / "scripts" / "deploy.sh"
OLD_IMAGE = "registry.fly.io/hello-birthday-test:deployment-01OLD"
NEW_IMAGE = "registry.fly.io/hello-birthday-test:deployment-02NEW"

FAKE_MAKE = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/make-calls"
exit "${FAKE_MAKE_EXIT:-0}"
"""


def fly_machine(
    machine_id: str, region: str = "ams", state: str = "started", volume: str = ""
) -> dict[str, object]:
    """One entry of ``fly machine list --json``: fly-go's Machine as flyctl prints it (abridged)."""
    return {
        "id": machine_id,
        "name": f"name-of-{machine_id}",
        "state": state,
        "region": region,
        "image_ref": {
            "registry": "registry.fly.io",
            "repository": "hello-birthday-test",
            "tag": "deployment-01OLD",
        },
        "instance_id": "01JTESTINSTANCE",
        "private_ip": "fdaa:0:1:a7b:1::2",
        "created_at": "2026-11-20T10:00:00Z",
        "updated_at": "2026-11-22T10:00:00Z",
        "config": {
            "image": OLD_IMAGE,
            "metadata": {
                "fly_platform_version": "v2",
                "fly_process_group": "app",
                "fly_release_version": "1",
            },
            "mounts": [{"volume": volume or f"vol_{machine_id}", "path": "/data", "name": "hello_data"}],
        },
        "host_status": "ok",
        "cordoned": False,
    }


ONE_MACHINE = json.dumps([fly_machine("e784079b449483")])


@dataclass
class Stage:
    """One deploy run's surroundings: the stand-in flyctl's folder and the smoke target's URL."""

    bin: Path
    url: str
    # Whether the new image passes the smoke check; the bad image answers 503 on /readyz.
    new_image_is_good: list[bool]

    def running_image(self) -> str:
        return (self.bin / "image").read_text()

    def calls(self) -> list[list[str]]:
        path = self.bin / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def deploys(self) -> list[list[str]]:
        return [call for call in self.calls() if call[:1] == ["deploy"]]

    def run(
        self,
        *args: str,
        secrets: str = "REPLICA_URL,AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY",
        machines: str = ONE_MACHINE,
        **env: str,
    ) -> subprocess.CompletedProcess[str]:
        environ = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_FLY_HOME": str(self.bin),
            "FAKE_FLY_OLD_IMAGE": OLD_IMAGE,
            "FAKE_FLY_NEW_IMAGE": NEW_IMAGE,
            "FAKE_FLY_SECRETS": secrets,
            "FAKE_FLY_MACHINES": machines,
            "MAKE": str(self.bin / "make"),
            "SMOKE_ATTEMPTS": "3",
            "SMOKE_INTERVAL": "0.1",
            **env,
        }
        environ.pop("FLY_APP", None)
        return subprocess.run(
            [str(DEPLOY), "--app", "hello-birthday-test", "--url", self.url, *args],
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def _serve(image_file: Path, new_image_is_good: list[bool]) -> ThreadingHTTPServer:
    """The service as the smoke check sees it: healthy on OLD_IMAGE, on NEW_IMAGE only if good.

    It keeps the API's contract as far as the smoke check looks (names of letters, past dates, 404 and
    400 as problem documents); tests/test_smoke_check.py runs the same check against the real service.
    """
    stored: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def _good(self) -> bool:
            return image_file.read_text() != NEW_IMAGE or new_image_is_good[0]

        def _answer(self, status: int, document: object | None = None) -> None:
            body = json.dumps(document).encode() if document is not None else b""
            self.send_response(status)
            kind = "application/problem+json" if status >= 400 else "application/json"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _name(self) -> str | None:
            name = self.path.removeprefix("/hello/")
            if name.isascii() and name.isalpha():
                return name
            self._answer(400, {"title": "Bad Request", "status": 400})
            return None

        def do_GET(self) -> None:
            if self.path == "/readyz":
                self._answer(200 if self._good() else 503, {"status": "ready" if self._good() else "no"})
            elif not self.path.startswith("/hello/"):
                self._answer(404, {"title": "Not Found", "status": 404})
            elif (name := self._name()) is None:
                return
            elif name in stored:
                self._answer(200, {"message": f"Hello, {name}! Your birthday is in 99 day(s)"})
            else:
                self._answer(404, {"title": "Not Found", "status": 404})

        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            document = json.loads(self.rfile.read(length))
            if (name := self._name()) is None:
                return
            if document["dateOfBirth"] >= date.today().isoformat():
                self._answer(400, {"title": "Bad Request", "status": 400})
                return
            stored[name] = document["dateOfBirth"]
            self._answer(204)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[Stage]:
    bin_dir = install_fake_fly(tmp_path / "bin")
    make = bin_dir / "make"
    make.write_text(FAKE_MAKE)
    make.chmod(make.stat().st_mode | stat.S_IXUSR)
    # What the app runs now: the stand-in's app (see tests/fakes/flyctl).
    (bin_dir / "image").write_text(OLD_IMAGE)
    new_image_is_good = [False]
    server = _serve(bin_dir / "image", new_image_is_good)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Stage(bin_dir, f"http://127.0.0.1:{server.server_address[1]}", new_image_is_good)
    finally:
        server.shutdown()
        server.server_close()


def test_happy_path_deploys_once_and_keeps_the_new_image(stage: Stage) -> None:
    stage.new_image_is_good[0] = True
    result = stage.run("--skip-tests")

    assert result.returncode == 0, result.stderr
    deploys = stage.deploys()
    assert len(deploys) == 1
    assert "--image" not in deploys[0]
    assert deploys[0][deploys[0].index("--strategy") + 1] == "rolling"
    assert stage.running_image() == NEW_IMAGE
    assert f"running now: {OLD_IMAGE}" in result.stderr
    # Preflight came first: config validated and secrets listed before the one deploy.
    commands = [call[:2] for call in stage.calls()]
    assert commands.index(["config", "validate"]) < commands.index(["deploy", "--app"])
    assert commands.index(["secrets", "list"]) < commands.index(["deploy", "--app"])
    assert commands.index(["machine", "list"]) < commands.index(["deploy", "--app"])
    assert "has one machine: e784079b449483 in ams: started, vol_e784079b449483" in result.stderr


def test_failing_smoke_check_rolls_back_to_the_previous_image_and_fails(stage: Stage) -> None:
    result = stage.run("--skip-tests")

    assert result.returncode != 0
    deploys = stage.deploys()
    assert len(deploys) == 2
    assert "--image" not in deploys[0]
    assert deploys[1][deploys[1].index("--image") + 1] == OLD_IMAGE
    assert stage.running_image() == OLD_IMAGE
    assert "/readyz answered 503" in result.stderr
    assert f"rolling back to {OLD_IMAGE}" in result.stderr
    assert "and it answers" in result.stderr


def test_failed_fly_deploy_rolls_back_too(stage: Stage) -> None:
    result = stage.run("--skip-tests", FAKE_FLY_DEPLOY_FAILS="1")

    assert result.returncode != 0
    assert [d[d.index("--image") + 1] for d in stage.deploys() if "--image" in d] == [OLD_IMAGE]
    assert "fly deploy failed" in result.stderr


def test_missing_secret_stops_before_deploying(stage: Stage) -> None:
    result = stage.run("--skip-tests", secrets="REPLICA_URL,AWS_ACCESS_KEY_ID")

    assert result.returncode != 0
    assert "AWS_SECRET_ACCESS_KEY" in result.stderr
    assert stage.deploys() == []
    assert stage.running_image() == OLD_IMAGE


def test_tests_run_first_and_a_failure_stops_the_deploy(stage: Stage) -> None:
    result = stage.run(FAKE_MAKE_EXIT="2")

    assert result.returncode != 0
    assert (stage.bin / "make-calls").read_text().split() == ["test"]
    assert "tests failed" in result.stderr
    assert stage.deploys() == []


def test_tests_run_by_default_before_a_deploy(stage: Stage) -> None:
    stage.new_image_is_good[0] = True
    result = stage.run()

    assert result.returncode == 0, result.stderr
    assert (stage.bin / "make-calls").read_text().split() == ["test"]
    assert len(stage.deploys()) == 1


def test_two_machines_are_refused_before_any_deploy_and_both_are_named(stage: Stage) -> None:
    stage.new_image_is_good[0] = True
    machines = [fly_machine("e784079b449483", "ams"), fly_machine("148ed193b95e89", "fra", "stopped")]
    result = stage.run("--skip-tests", machines=json.dumps(machines))

    assert result.returncode != 0
    assert stage.deploys() == []
    assert stage.running_image() == OLD_IMAGE
    assert "has 2 machines that are not destroyed" in result.stderr
    assert "e784079b449483 in ams: started, vol_e784079b449483" in result.stderr
    assert "148ed193b95e89 in fra: stopped, vol_148ed193b95e89" in result.stderr
    assert "fly machine destroy ID --app hello-birthday-test" in result.stderr
    assert "fly scale count 1 --app hello-birthday-test" in result.stderr
    assert "Not deploying" in result.stderr


def test_a_destroyed_machine_is_not_counted(stage: Stage) -> None:
    stage.new_image_is_good[0] = True
    machines = [fly_machine("e784079b449483"), fly_machine("148ed193b95e89", "fra", "destroyed")]
    result = stage.run("--skip-tests", machines=json.dumps(machines))

    assert result.returncode == 0, result.stderr
    assert "has one machine (1 destroyed, not counted)" in result.stderr
    assert len(stage.deploys()) == 1
    assert stage.running_image() == NEW_IMAGE


def test_no_machine_yet_is_a_first_deploy(stage: Stage) -> None:
    stage.new_image_is_good[0] = True
    result = stage.run("--skip-tests", machines="[]")

    assert result.returncode == 0, result.stderr
    assert "has no machine yet" in result.stderr
    assert len(stage.deploys()) == 1


def test_a_machine_list_that_fails_stops_before_deploying(stage: Stage) -> None:
    result = stage.run("--skip-tests", machines="fail")

    assert result.returncode != 0
    assert "cannot list the machines of hello-birthday-test" in result.stderr
    assert stage.deploys() == []


def test_a_machine_list_that_is_not_json_stops_before_deploying(stage: Stage) -> None:
    result = stage.run("--skip-tests", machines="No machines are available on this app hello-birthday-test")

    assert result.returncode != 0
    assert "cannot read the machines of hello-birthday-test" in result.stderr
    assert stage.deploys() == []


def test_every_fly_deploy_asks_for_one_machine_only(stage: Stage) -> None:
    # The bad new image makes a deploy and a roll back: both are `fly deploy` calls.
    result = stage.run("--skip-tests")

    assert result.returncode != 0
    deploys = stage.deploys()
    assert len(deploys) == 2
    assert all("--ha=false" in deploy for deploy in deploys), deploys


def test_a_given_image_is_deployed_as_it_is_without_a_build(stage: Stage) -> None:
    stage.new_image_is_good[0] = True
    result = stage.run("--skip-tests", "--image", NEW_IMAGE)

    assert result.returncode == 0, result.stderr
    (deploy,) = stage.deploys()
    assert deploy[deploy.index("--image") + 1] == NEW_IMAGE
    assert "--remote-only" not in deploy
    assert stage.running_image() == NEW_IMAGE
    assert "smoke: ok   GET /hello/Bad1Name -> 400" in result.stderr


def test_a_given_image_that_fails_the_contract_is_rolled_back(stage: Stage) -> None:
    result = stage.run("--skip-tests", "--image", NEW_IMAGE)

    assert result.returncode != 0
    images = [d[d.index("--image") + 1] for d in stage.deploys()]
    assert images == [NEW_IMAGE, OLD_IMAGE]
    assert stage.running_image() == OLD_IMAGE
