"""Deploy to Fly.io with a safety net: preflight, rolling deploy, smoke check, automatic roll back.

    scripts/deploy.sh [--app NAME] [--config fly.toml] [--url https://NAME.fly.dev] [--skip-tests]
                      [--image REF]

1. Preflight: `make test` (unless --skip-tests, for CI where the test job already ran), `fly config
   validate`, and the secrets the service cannot start without (REPLICA_URL, AWS_ACCESS_KEY_ID,
   AWS_SECRET_ACCESS_KEY) present in `fly secrets list`, and at most one Machine that is not
   destroyed in `fly machine list` (one SQLite writer per replica path; a stopped Machine counts).
   Any failure stops before deploying.
2. Remember the image now running (the newest complete release in `fly releases --json`).
3. `fly deploy --strategy rolling --ha=false`, of --image REF when given (the pipeline builds one
   image and deploys it to staging, then to production), else built from this checkout: the Machine
   stops, starts on the new image with the same volume, and flyctl waits for the /readyz service
   check. --ha=false: a first deploy creates one Machine, never a second "for availability".
4. Smoke and contract check through the public URL (scripts/smoke_check.py): /readyz answers 200,
   PUT 204, GET greeting, 404 for an unknown user, 400 for a bad name and for a future date.
5. If the deploy or the smoke check fails: `fly deploy --image <previous>`, check /readyz again,
   and exit 1 either way so that CI shows red.

Environment: FLY_APP (instead of --app), SMOKE_URL (instead of --url), SMOKE_ATTEMPTS (default 30)
and SMOKE_INTERVAL (seconds, default 5) for how long /readyz may take, FLY (the flyctl command,
default `fly`), MAKE (default `make`). FLY_API_TOKEN authenticates flyctl in CI.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from scripts import fly_checks, smoke_check

REQUIRED_SECRETS = ("REPLICA_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
SMOKE_USER = "Deploysmoke"


class Stop(Exception):
    """Deploying stops here with this message (exit 1)."""


def log(message: str) -> None:
    print(f"deploy: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Settings:
    """The command line, then the environment, then the defaults; read once here."""

    app: str
    config: Path
    url: str
    run_tests: bool
    image: str
    fly: str
    make: str
    attempts: int
    interval: float

    @classmethod
    def parse(cls, argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
        parser = argparse.ArgumentParser(
            prog="scripts/deploy.sh",
            description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
            epilog="Environment: FLY_APP, SMOKE_URL, SMOKE_ATTEMPTS (30), SMOKE_INTERVAL (5), FLY, MAKE.",
        )
        parser.add_argument("--app", default=environ.get("FLY_APP", ""))
        parser.add_argument("--config", type=Path, default=Path("fly.toml"))
        parser.add_argument("--url", default=environ.get("SMOKE_URL", ""))
        parser.add_argument("--skip-tests", action="store_true")
        parser.add_argument("--image", default="")
        args = parser.parse_args(argv)
        fly = environ.get("FLY", "fly")
        if shutil.which(fly) is None:
            raise Stop(f"{fly} (flyctl) is not on PATH: https://fly.io/docs/flyctl/install/")
        if not args.config.is_file():
            raise Stop(f"no {args.config} here")
        app = args.app
        if not app:
            try:
                app = fly_checks.app_name(args.config)
            except (fly_checks.UnexpectedOutput, OSError, ValueError) as exc:
                raise Stop(f"cannot read the app's name from {args.config}: give --app ({exc})") from None
        try:
            attempts = int(environ.get("SMOKE_ATTEMPTS", "30"))
            interval = float(environ.get("SMOKE_INTERVAL", "5"))
        except ValueError as exc:
            raise Stop(f"SMOKE_ATTEMPTS and SMOKE_INTERVAL must be numbers: {exc}") from None
        return cls(
            app=app,
            config=args.config,
            url=(args.url or f"https://{app}.fly.dev").rstrip("/"),
            run_tests=not args.skip_tests,
            image=args.image,
            fly=fly,
            make=environ.get("MAKE", "make"),
            attempts=attempts,
            interval=interval,
        )


class Deploy:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app_args = ["--app", settings.app, "--config", str(settings.config)]

    def fly(self, *args: str) -> bool:
        """flyctl with its output on standard error; whether it succeeded."""
        return subprocess.run([self.settings.fly, *args], stdout=sys.stderr, check=False).returncode == 0

    def fly_json(self, *args: str, what: str) -> object:
        answer = subprocess.run(
            [self.settings.fly, *args, *self.app_args, "--json"], capture_output=True, text=True, check=False
        )
        if answer.returncode != 0:
            sys.stderr.write(answer.stderr)
            raise Stop(f"cannot list the {what} of {self.settings.app}")
        try:
            return fly_checks.read_json(answer.stdout)
        except fly_checks.UnexpectedOutput as exc:
            raise Stop(f"cannot read the {what} of {self.settings.app}: {exc}") from None

    def smoke_check(self) -> bool:
        failures = smoke_check.smoke_check(
            self.settings.url, SMOKE_USER, self.settings.attempts, self.settings.interval, random.Random()
        )
        if failures:
            log(f"smoke check: {self.settings.url} failed {len(failures)} check(s): {'; '.join(failures)}")
            return False
        log(f"smoke check: {self.settings.url} is ready and answers every contract case")
        return True

    def preflight(self) -> None:
        settings = self.settings
        if settings.run_tests:
            log(f"preflight: {settings.make} test")
            if subprocess.run([settings.make, "test"], check=False).returncode != 0:
                raise Stop("tests failed: not deploying")
        else:
            log("preflight: tests skipped (--skip-tests)")
        log(f"preflight: {settings.fly} config validate")
        if not self.fly("config", "validate", *self.app_args):
            raise Stop(f"{settings.config} is not valid: not deploying")
        try:
            missing = fly_checks.missing_secrets(
                self.fly_json("secrets", "list", what="secrets"), REQUIRED_SECRETS
            )
        except fly_checks.UnexpectedOutput as exc:
            raise Stop(f"cannot read the secrets of {settings.app}: not deploying ({exc})") from None
        if missing:
            raise Stop(
                f"secrets missing on {settings.app}: {' '.join(missing)} (fly secrets set --stage NAME=...; "
                "see docs/runbook.md): not deploying"
            )
        # One writer per replica path: two Machines, each on its own volume, would both replicate to it.
        log(f"preflight: {settings.fly} machine list")
        try:
            machines = fly_checks.parse_machines(self.fly_json("machine", "list", what="machines"))
        except fly_checks.UnexpectedOutput as exc:
            raise Stop(f"cannot read the machines of {settings.app}: not deploying ({exc})") from None
        verdict = fly_checks.one_machine_verdict(settings.app, machines)
        if not verdict.ok:
            raise Stop(verdict.message)
        log(verdict.message)

    def running_image(self) -> str:
        return fly_checks.current_image(self.fly_json("releases", what="releases"))

    def roll_back(self, previous: str, reason: str) -> Stop:
        app = self.settings.app
        if not previous:
            return Stop(
                f"{reason}, and there is no earlier image to roll back to: investigate with "
                f"'{self.settings.fly} logs --app {app}'"
            )
        log(f"{reason}: rolling back to {previous}")
        if not self.fly("deploy", *self.app_args, "--image", previous, "--strategy", "rolling", "--ha=false"):
            return Stop(
                f"ROLL BACK FAILED: run '{self.settings.fly} deploy --app {app} --image {previous}' by hand"
            )
        if self.smoke_check():
            return Stop(f"rolled back to {previous}, and it answers")
        return Stop(f"rolled back to {previous}, but the smoke check still fails: see docs/runbook.md")

    def run(self) -> None:
        settings = self.settings
        self.preflight()
        try:
            previous = self.running_image()
        except fly_checks.UnexpectedOutput as exc:
            raise Stop(f"cannot read the releases of {settings.app}: {exc}") from None
        log(f"running now: {previous or 'nothing (first deploy)'}")
        source = ["--image", settings.image] if settings.image else ["--remote-only"]
        log(f"deploying {settings.app} (rolling): {settings.image or 'built from this checkout'}")
        if not self.fly("deploy", *self.app_args, "--strategy", "rolling", "--ha=false", *source):
            raise self.roll_back(previous, "fly deploy failed")
        try:
            deployed = self.running_image()
        except (Stop, fly_checks.UnexpectedOutput):
            deployed = ""
        log(f"deployed: {deployed or 'unknown image'}")
        if not self.smoke_check():
            raise self.roll_back(previous, f"smoke check against {settings.url} failed")
        log(f"done: {settings.app} runs {deployed or 'the new image'}")


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    try:
        Deploy(Settings.parse(argv, environ)).run()
    except Stop as stop:
        log(str(stop))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
