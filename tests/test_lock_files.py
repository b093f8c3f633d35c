"""The lock files hold every direct dependency at the version pyproject.toml pins, with hashes, and
the runtime lock holds nothing that only the tests or the benchmark need."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\[\]-]+)==(\S+)$")


def _locked(name: str) -> dict[str, str]:
    text = (ROOT / "requirements" / name).read_text()
    found: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", text):
        head = block.splitlines()[0].split(" ")[0].split(";")[0].strip()
        if match := PIN.match(head):
            package = re.sub(r"\[.*\]", "", match.group(1)).lower().replace("_", "-")
            found[package] = match.group(2)
            assert "--hash=sha256:" in block, f"{head}: no hash in requirements/{name}"
    return found


def _pinned(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for requirement in requirements:
        match = PIN.match(requirement.split(";")[0].strip())
        assert match, f"{requirement}: pin it with == in pyproject.toml"
        pins[re.sub(r"\[.*\]", "", match.group(1)).lower().replace("_", "-")] = match.group(2)
    return pins


def test_every_pin_of_pyproject_is_locked_at_its_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _pinned(project["dependencies"])
    extras = _pinned(project["optional-dependencies"]["dev"] + project["optional-dependencies"]["bench"])
    run, dev = _locked("run.txt"), _locked("dev.txt")
    for package, version in runtime.items():
        assert run.get(package) == version, f"{package}=={version}: run `make lock`"
        assert dev.get(package) == version, f"{package}=={version}: run `make lock`"
    for package, version in extras.items():
        assert dev.get(package) == version, f"{package}=={version}: run `make lock`"
        assert package not in run, f"{package} is for tests or the benchmark, not for running"
