"""What ``scripts/deploy.sh`` reads from fly.toml and from flyctl's JSON, and the verdicts it acts on.

Standard library only, so that it runs on any python3 (3.11+) beside flyctl, as deploy.sh does::

    python3 scripts/fly_checks.py app-name fly.toml               # the app fly.toml names
    fly releases --json | python3 scripts/fly_checks.py current-image
    fly secrets list --json | python3 scripts/fly_checks.py missing-secrets NAME...
    fly machine list --json | python3 scripts/fly_checks.py one-machine APP

``one-machine`` exits 0 when the app has at most one machine that is not destroyed, and 1, naming the
machines and what to do, when it has more: one SQLite database replicated to one path allows exactly
one writer. Any subcommand exits 2 when its input is not what flyctl prints.

The field names are flyctl's: ``fly machine list --json`` prints fly-go's ``Machine`` (``id``,
``state``, ``region``, ``config.metadata.fly_process_group``, ``config.mounts[].volume``; a machine
whose host does not answer has ``incomplete_config`` instead of ``config``), and ``fly releases
--json`` prints fly-go's ``Release`` with Go's field names (``Version``, ``Status``, ``ImageRef``).
"""

import json
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# fly-go's Machine.IsActive(): every other state can run the service on its volume again, a stopped
# or suspended machine as soon as it is started (by hand, by a deploy, or by Fly's proxy).
GONE_STATES = frozenset({"destroyed", "destroying"})


class UnexpectedOutput(ValueError):
    """flyctl printed something other than the JSON this module knows."""


@dataclass(frozen=True)
class Machine:
    """The parts of one entry of ``fly machine list --json`` that matter for a deploy."""

    id: str
    state: str
    region: str
    process_group: str
    volumes: tuple[str, ...]
    created_at: str

    @property
    def can_write(self) -> bool:
        """Whether the machine can run the service, and so replicate, now or once started."""
        return self.state not in GONE_STATES

    def describe(self) -> str:
        volumes = ", ".join(self.volumes) or "no volume"
        group = f", process group {self.process_group}" if self.process_group else ""
        created = f", created {self.created_at}" if self.created_at else ""
        return f"{self.id} in {self.region or 'an unknown region'}: {self.state}, {volumes}{group}{created}"


def _list_of_objects(document: object, what: str) -> list[Mapping[str, Any]]:
    if document is None:  # Go prints a nil slice as null
        return []
    if not isinstance(document, list) or not all(isinstance(item, dict) for item in document):
        raise UnexpectedOutput(f"{what}: expected a JSON array of objects")
    return document


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def parse_machines(document: object) -> list[Machine]:
    """The machines in the parsed output of ``fly machine list --json``."""
    machines = []
    for entry in _list_of_objects(document, "fly machine list --json"):
        machine_id = _text(entry.get("id"))
        if not machine_id:
            raise UnexpectedOutput("fly machine list --json: a machine without an id")
        config = entry.get("config") or entry.get("incomplete_config") or {}
        metadata = (config.get("metadata") or {}) if isinstance(config, dict) else None
        mounts = (config.get("mounts") or []) if isinstance(config, dict) else None
        if not isinstance(metadata, dict) or not isinstance(mounts, list):
            raise UnexpectedOutput(f"fly machine list --json: machine {machine_id} has an odd config")
        machines.append(
            Machine(
                id=machine_id,
                # A state flyctl did not print counts: only a machine known to be gone is left out.
                state=_text(entry.get("state")) or "unknown",
                region=_text(entry.get("region")),
                # fly-go's MachineConfig.ProcessGroup(): fly_process_group, else the older process_group.
                process_group=_text(metadata.get("fly_process_group"))
                or _text(metadata.get("process_group")),
                volumes=tuple(
                    _text(mount.get("volume"))
                    for mount in mounts
                    if isinstance(mount, dict) and mount.get("volume")
                ),
                created_at=_text(entry.get("created_at")),
            )
        )
    return machines


@dataclass(frozen=True)
class Verdict:
    """Whether a deploy may go on, and what to tell the operator."""

    ok: bool
    message: str


def one_machine_verdict(app: str, machines: Sequence[Machine]) -> Verdict:
    """At most one machine that can write: deploy. More: refuse, name them, say what to do."""
    writers = [machine for machine in machines if machine.can_write]
    gone = len(machines) - len(writers)
    gone_note = f" ({gone} destroyed, not counted)" if gone else ""
    if not writers:
        return Verdict(True, f"{app} has no machine yet{gone_note}: the deploy creates one")
    if len(writers) == 1:
        return Verdict(True, f"{app} has one machine{gone_note}: {writers[0].describe()}")
    listing = "\n".join(f"  {machine.describe()}" for machine in writers)
    return Verdict(
        False,
        f"{app} has {len(writers)} machines that are not destroyed{gone_note}, and allows one: each runs "
        f"its own database and replicates it to the same replica path, where two writers overwrite "
        f"each other's acknowledged writes. Stopped machines count: they write again once started.\n"
        f"{listing}\n"
        f"Keep the machine that holds the newest data (docs/runbook.md, 'More than one Machine'), "
        f"then for each other one: 'fly machine stop ID --app {app}', then "
        f"'fly machine destroy ID --app {app}'; keep its volume until its rows are checked. "
        f"'fly scale count 1 --app {app}' also removes the extra ones, but flyctl picks which. "
        f"Not deploying.",
    )


def current_image(document: object) -> str:
    """The image of the newest release that finished, or "" when none has.

    Keys are compared without case or underscores, so that ``image_ref`` would do as well as
    ``ImageRef``.
    """
    releases = [
        {key.lower().replace("_", ""): value for key, value in release.items()}
        for release in _list_of_objects(document, "fly releases --json")
    ]
    done = [
        release
        for release in releases
        if str(release.get("status")).lower() in ("complete", "succeeded") and release.get("imageref")
    ]
    done.sort(key=lambda release: int(release.get("version") or 0), reverse=True)
    return str(done[0]["imageref"]) if done else ""


def missing_secrets(document: object, required: Iterable[str]) -> list[str]:
    """The required secret names that ``fly secrets list --json`` does not show, in the given order."""
    names = {
        secret.get("Name", secret.get("name"))
        for secret in _list_of_objects(document, "fly secrets list --json")
    }
    return [name for name in required if name not in names]


def app_name(fly_toml: Path) -> str:
    """The ``app`` that fly.toml names."""
    with fly_toml.open("rb") as file:
        name = tomllib.load(file).get("app")
    if not isinstance(name, str) or not name:
        raise UnexpectedOutput(f"{fly_toml} names no app")
    return name


def read_json(text: str) -> object:
    try:
        document: object = json.loads(text or "null")
    except json.JSONDecodeError as exc:
        raise UnexpectedOutput(f"not JSON: {exc}") from exc
    return document


USAGE = """usage: fly_checks.py app-name FLY_TOML
       fly_checks.py current-image < releases.json
       fly_checks.py missing-secrets NAME... < secrets.json
       fly_checks.py one-machine APP < machines.json"""


def main(argv: Sequence[str]) -> int:
    """Run one subcommand: print its answer, return the exit status."""
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    command, args = argv[0], list(argv[1:])
    try:
        if command == "app-name" and len(args) == 1:
            print(app_name(Path(args[0])))
        elif command == "current-image" and not args:
            print(current_image(read_json(sys.stdin.read())))
        elif command == "missing-secrets":
            print(" ".join(missing_secrets(read_json(sys.stdin.read()), args)))
        elif command == "one-machine" and len(args) == 1:
            verdict = one_machine_verdict(args[0], parse_machines(read_json(sys.stdin.read())))
            print(verdict.message)
            return 0 if verdict.ok else 1
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except (UnexpectedOutput, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"fly_checks.py {command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
