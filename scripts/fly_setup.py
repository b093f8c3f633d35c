"""Provision one environment on Fly.io, safe to run again: ``scripts/setup.sh`` runs this.

    python3 scripts/fly_setup.py [--dry-run] ENVIRONMENT                  # staging | production
    python3 scripts/fly_setup.py app-name ENVIRONMENT                     # the app's name, for CI

Each environment is its own Fly app with its own volume, bucket and secrets. Production is the app
fly.toml names; staging is that name plus ``-staging``. The volume takes fly.toml's ``[[mounts]]``
(``source``, ``initial_size``, ``snapshot_retention``) and ``primary_region``; the bucket is
``<app>-replica``. In order, each step looks first and creates only what is missing, printing what it
found:

1. the app (``fly apps list --json``; ``fly apps create``);
2. the volume (``fly volumes list --json``; ``fly volumes create ... --yes``);
3. the object-storage bucket (``fly storage list``; ``fly storage create --app APP --name BUCKET
   --yes``, which sets AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3, AWS_REGION and
   BUCKET_NAME as secrets of the app);
4. the secrets (``fly secrets list --json``; ``fly secrets set --stage``): REPLICA_URL, and
   LITESTREAM_HEARTBEAT_URL when this command's environment has it. Staged: they take effect with the
   next deploy, and no running Machine restarts now. A secret that exists is never overwritten (Fly
   shows only a digest of its value); change one by hand with ``fly secrets set --stage``.

No metrics token: Fly's Prometheus scrapes ``[metrics]`` over the private network without one, and
the dashboards read it from Fly's managed Grafana. A token is needed only by a reader outside Fly, and
is an operator's decision (docs/runbook.md, "Setting up an environment").

``--dry-run`` runs the read-only look-ups and prints the commands that would change something, without
running them. An unknown environment is refused (exit 2) before any flyctl call. Exits 1 when a flyctl
call fails or the account is in a state this cannot repair alone (the message says what to do).

Standard library only, like scripts/fly_checks.py: it runs on any python3 (3.11+) beside flyctl. FLY
names the flyctl command (default ``fly``); FLY_ORG the organization a new app goes to (default
``personal``).
"""

import json
import os
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENTS = ("staging", "production")
TIGRIS_ENDPOINT = "https://fly.storage.tigris.dev"
# What `fly storage create --app` sets on the app, and what the service needs of them.
STORAGE_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
GONE_VOLUME_STATES = frozenset({"destroyed", "destroying", "pending_destroy", "scheduling_destroy"})


class SetupError(Exception):
    """A step failed, or found something it must not repair alone; the message says what to do."""


@dataclass(frozen=True)
class Plan:
    """Names and sizes for one environment, from fly.toml."""

    environment: str
    app: str
    region: str
    volume: str
    volume_size_gb: int
    snapshot_retention: int | None
    bucket: str

    @property
    def replica_url(self) -> str:
        return f"s3://{self.bucket}/hello.db?endpoint={TIGRIS_ENDPOINT}&region=auto"


def app_name(environment: str, fly_toml: Mapping[str, Any]) -> str:
    if environment not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {environment!r}: give one of {', '.join(ENVIRONMENTS)}")
    base = fly_toml.get("app")
    if not isinstance(base, str) or not base:
        raise ValueError("fly.toml names no app")
    return base if environment == "production" else f"{base}-{environment}"


def plan_for(environment: str, fly_toml: Mapping[str, Any]) -> Plan:
    app = app_name(environment, fly_toml)
    mounts = fly_toml.get("mounts")
    (mount,) = mounts if isinstance(mounts, list) else [mounts]
    if not isinstance(mount, dict) or not mount.get("source"):
        raise ValueError("fly.toml has no [[mounts]] source")
    size = str(mount.get("initial_size", "1gb")).lower().removesuffix("gb").strip()
    retention = mount.get("snapshot_retention")
    return Plan(
        environment=environment,
        app=app,
        region=str(fly_toml.get("primary_region") or "ams"),
        volume=str(mount["source"]),
        volume_size_gb=int(size),
        snapshot_retention=int(retention) if retention is not None else None,
        bucket=f"{app}-replica",
    )


def _objects(text: str, what: str) -> list[dict[str, Any]]:
    try:
        document = json.loads(text or "null")
    except json.JSONDecodeError as exc:
        raise SetupError(f"{what} did not print JSON: {exc}") from exc
    if document is None:
        return []
    if not isinstance(document, list) or not all(isinstance(item, dict) for item in document):
        raise SetupError(f"{what}: expected a JSON array of objects")
    return document


def _field(entry: Mapping[str, Any], name: str) -> str:
    """A field by name in flyctl's JSON, whatever its case (``Name`` from GraphQL, ``name`` from flaps)."""
    for key, value in entry.items():
        if key.lower() == name.lower():
            return value if isinstance(value, str) else ""
    return ""


def table_first_column(text: str) -> set[str]:
    """The first word of each row of a flyctl table (``fly storage list`` prints no JSON)."""
    return {line.split()[0] for line in text.splitlines()[1:] if line.split()}


@dataclass
class Setup:
    plan: Plan
    fly: Sequence[str]
    dry_run: bool
    environ: Mapping[str, str]
    created: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)

    def say(self, message: str) -> None:
        print(f"setup {self.plan.environment}: {message}", flush=True)

    def look(self, *args: str) -> str:
        """A read-only flyctl call; it runs in a dry run too."""
        result = subprocess.run([*self.fly, *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SetupError(
                f"'fly {' '.join(args)}' failed: {result.stderr.strip() or result.stdout.strip()}"
            )
        return result.stdout

    def change(self, what: str, args: Sequence[str], shown: Sequence[str] | None = None) -> None:
        """A call that creates something: printed, and run unless this is a dry run."""
        printable = shlex.join(["fly", *(shown or args)])
        if self.dry_run:
            self.say(f"{what}: missing, would run: {printable}")
            self.created.append(what)
            return
        self.say(f"{what}: missing, running: {printable}")
        result = subprocess.run([*self.fly, *args], check=False)
        if result.returncode != 0:
            raise SetupError(f"{printable} failed (exit {result.returncode}); its output is above")
        self.created.append(what)

    def keep(self, what: str, detail: str) -> None:
        self.say(f"{what}: found {detail}, kept as it is")
        self.found.append(what)

    # --- The steps ---------------------------------------------------------------------------------

    def app(self) -> bool:
        """Whether the app exists now (in a dry run: already)."""
        apps = _objects(self.look("apps", "list", "--json"), "fly apps list --json")
        match = [entry for entry in apps if _field(entry, "name") == self.plan.app]
        if match:
            status = _field(match[0], "status")
            self.keep(f"app {self.plan.app}", f"({status})" if status else "")
            return True
        org = self.environ.get("FLY_ORG", "personal")
        self.change(f"app {self.plan.app}", ["apps", "create", self.plan.app, "--org", org])
        return not self.dry_run

    def volume(self, app_exists: bool) -> None:
        what = f"volume {self.plan.volume} of {self.plan.app}"
        volumes = (
            _objects(
                self.look("volumes", "list", "--app", self.plan.app, "--json"), "fly volumes list --json"
            )
            if app_exists
            else []
        )
        live = [
            entry
            for entry in volumes
            if _field(entry, "name") == self.plan.volume and _field(entry, "state") not in GONE_VOLUME_STATES
        ]
        if len(live) > 1:
            ids = ", ".join(f"{_field(v, 'id')} ({_field(v, 'region')})" for v in live)
            raise SetupError(
                f"{what}: {len(live)} volumes of that name ({ids}); Fly mounts any unattached one, so an old "
                f"database can come back: keep the one with the newest data and destroy the others "
                f"(docs/runbook.md, 'More than one Machine')"
            )
        if live:
            volume = live[0]
            size = volume.get("size_gb")
            self.keep(what, f"({_field(volume, 'id')} in {_field(volume, 'region')}, {size} GB)")
            return
        args = [
            "volumes", "create", self.plan.volume, "--app", self.plan.app, "--region", self.plan.region,
            "--size", str(self.plan.volume_size_gb), "--yes",
        ]  # fmt: skip
        if self.plan.snapshot_retention is not None:
            args[-1:-1] = ["--snapshot-retention", str(self.plan.snapshot_retention)]
        self.change(what, args)

    def bucket(self, secrets: set[str]) -> set[str]:
        """Make sure the bucket exists; the secret names the app has afterwards."""
        what = f"bucket {self.plan.bucket}"
        if self.plan.bucket in table_first_column(self.look("storage", "list")):
            missing = [name for name in STORAGE_SECRETS if name not in secrets]
            if missing and not self.dry_run:
                raise SetupError(
                    f"{what} exists, but {self.plan.app} has no {' or '.join(missing)}: create an access key "
                    f"for the bucket ('fly storage dashboard {self.plan.bucket}'), then "
                    f"'fly secrets set --stage --app {self.plan.app} AWS_ACCESS_KEY_ID=... "
                    f"AWS_SECRET_ACCESS_KEY=...', and run this again"
                )
            self.keep(what, "(with its credentials among the app's secrets)")
            return secrets
        self.change(what, ["storage", "create", "--app", self.plan.app, "--name", self.plan.bucket, "--yes"])
        return secrets | set(STORAGE_SECRETS) if self.dry_run else self.secret_names(True)

    def secret_names(self, app_exists: bool) -> set[str]:
        if not app_exists:
            return set()
        listed = self.look("secrets", "list", "--app", self.plan.app, "--json")
        return {_field(entry, "name") for entry in _objects(listed, "fly secrets list --json")}

    def secrets(self, secrets: set[str]) -> None:
        wanted = {"REPLICA_URL": (self.plan.replica_url, self.plan.replica_url)}
        heartbeat = self.environ.get("LITESTREAM_HEARTBEAT_URL", "")
        if heartbeat:
            # Its path usually holds the receiver's token: never printed.
            wanted["LITESTREAM_HEARTBEAT_URL"] = (heartbeat, "<LITESTREAM_HEARTBEAT_URL>")
        for name, (value, shown) in wanted.items():
            what = f"secret {name}"
            if name in secrets:
                self.keep(what, "(Fly shows only its digest; 'fly secrets set --stage' changes it)")
                continue
            base = ["secrets", "set", "--stage", "--app", self.plan.app]
            self.change(what, [*base, f"{name}={value}"], [*base, f"{name}={shown}"])

    def run(self) -> None:
        self.say(
            f"app {self.plan.app}, volume {self.plan.volume} ({self.plan.volume_size_gb} GB in "
            f"{self.plan.region}), bucket {self.plan.bucket}{' (dry run)' if self.dry_run else ''}"
        )
        app_exists = self.app()
        self.volume(app_exists)
        secrets = self.bucket(self.secret_names(app_exists))
        self.secrets(secrets)
        self.say("metrics token: none needed (Fly's Prometheus scrapes [metrics] over the private network)")
        verb = "would create" if self.dry_run else "created"
        self.say(
            f"done: {verb} {len(self.created)} ({', '.join(self.created) or 'nothing'}), "
            f"found {len(self.found)} already there"
        )
        if self.created and not self.dry_run:
            self.say(f"next: scripts/deploy.sh --app {self.plan.app} (the staged secrets take effect then)")


USAGE = """usage: setup.sh [--dry-run] ENVIRONMENT        (ENVIRONMENT: staging or production)
       fly_setup.py app-name ENVIRONMENT"""


def _read_fly_toml() -> dict[str, Any]:
    with (ROOT / "fly.toml").open("rb") as file:
        return tomllib.load(file)


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    args = list(argv)
    if args[:1] == ["app-name"] and len(args) == 2:
        try:
            print(app_name(args[1], _read_fly_toml()))
        except ValueError as exc:
            print(f"fly_setup.py: {exc}", file=sys.stderr)
            return 2
        return 0
    dry_run = "--dry-run" in args
    positional = [arg for arg in args if arg != "--dry-run"]
    if len(positional) != 1 or positional[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        plan = plan_for(positional[0], _read_fly_toml())
    except (ValueError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"setup: {exc}", file=sys.stderr)
        return 2
    setup = Setup(plan, shlex.split(environ.get("FLY", "fly")), dry_run, environ)
    try:
        setup.run()
    except SetupError as exc:
        setup.say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
