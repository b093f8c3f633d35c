"""scripts/deploy.sh: preflight, rolling deploy, smoke check, automatic roll back.

flyctl cannot reach Fly.io from here, so a stand-in ``fly`` goes first on PATH: a small Python script
that records every call and answers ``secrets list``, ``releases`` and ``deploy`` the way flyctl does
(the same JSON fields). The smoke target is real: an HTTP server on 127.0.0.1 that serves the image
the stand-in last "deployed", answering like the service when that image is good and with 503 on
/readyz when it is the bad one. So the script's real HTTP checks decide whether it rolls back.
"""

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "scripts" / "deploy.sh"
OLD_IMAGE = "registry.fly.io/hello-birthday-test:deployment-01OLD"
NEW_IMAGE = "registry.fly.io/hello-birthday-test:deployment-02NEW"

# The stand-in flyctl. State lives in files beside it: calls.jsonl (one JSON argv per call) and
# image (what is "running"). `deploy --image X` runs X; a plain `deploy` runs NEW_IMAGE.
FAKE_FLY = """#!{python}
import json, os, sys
from pathlib import Path

here = Path(__file__).resolve().parent
args = sys.argv[1:]
with open(here / "calls.jsonl", "a") as calls:
    calls.write(json.dumps(args) + "\\n")
image_file = here / "image"

if args[:2] == ["config", "validate"]:
    print("Configuration is valid")
elif args[:2] == ["secrets", "list"]:
    names = [n for n in os.environ.get("FAKE_FLY_SECRETS", "").split(",") if n]
    print(json.dumps([{{"Name": n, "Digest": "d1g35t", "CreatedAt": "2026-01-01T00:00:00Z"}} for n in names]))
elif args[:1] == ["releases"]:
    releases = [{{"Version": 1, "Status": "complete", "ImageRef": "{old}", "Stable": True}}]
    for version, line in enumerate((here / "calls.jsonl").read_text().splitlines(), start=2):
        call = json.loads(line)
        if call[:1] == ["deploy"]:
            image = call[call.index("--image") + 1] if "--image" in call else "{new}"
            releases.append({{"Version": version, "Status": "complete", "ImageRef": image}})
    print(json.dumps(sorted(releases, key=lambda r: -r["Version"])))
elif args[:1] == ["deploy"]:
    if os.environ.get("FAKE_FLY_DEPLOY_FAILS") and "--image" not in args:
        sys.exit("Error: timeout reached waiting for health checks to pass")
    image_file.write_text(args[args.index("--image") + 1] if "--image" in args else "{new}")
else:
    sys.exit("stand-in fly: unexpected call " + " ".join(args))
"""

FAKE_MAKE = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/make-calls"
exit "${FAKE_MAKE_EXIT:-0}"
"""


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
        self, *args: str, secrets: str = "REPLICA_URL,AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY", **env: str
    ) -> subprocess.CompletedProcess[str]:
        environ = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_FLY_SECRETS": secrets,
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
    """The service as the smoke check sees it: healthy on OLD_IMAGE, on NEW_IMAGE only if good."""
    stored: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def _good(self) -> bool:
            return image_file.read_text() != NEW_IMAGE or new_image_is_good[0]

        def _answer(self, status: int, document: object | None = None) -> None:
            body = json.dumps(document).encode() if document is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/readyz":
                self._answer(200 if self._good() else 503, {"status": "ready" if self._good() else "no"})
            elif self.path.startswith("/hello/") and self.path[7:] in stored:
                self._answer(200, {"message": f"Hello, {self.path[7:]}! Your birthday is in 99 day(s)"})
            else:
                self._answer(404, {"title": "Not Found"})

        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            document = json.loads(self.rfile.read(length))
            stored[self.path[7:]] = document["dateOfBirth"]
            self._answer(204)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[Stage]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (
        ("fly", FAKE_FLY.format(python=sys.executable, old=OLD_IMAGE, new=NEW_IMAGE)),
        ("make", FAKE_MAKE),
    ):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
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
