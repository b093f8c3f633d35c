"""scripts/fly_checks.py on its own: flyctl's JSON in, machines, images, secrets and verdicts out.

The documents below have the shape flyctl prints (``render.JSON``: fly-go's structs, 4-space indent);
tests/test_deploy_script.py runs the same code through scripts/deploy.sh.
"""

import io
import json
from pathlib import Path

import pytest

from scripts.fly_checks import (
    Machine,
    UnexpectedOutput,
    app_name,
    current_image,
    main,
    missing_secrets,
    one_machine_verdict,
    parse_machines,
)

ROOT = Path(__file__).resolve().parent.parent

# `fly machine list --json` for an app with two machines: one whose host answers, one whose host does
# not (flyctl then prints incomplete_config instead of config, and the machine still exists).
TWO_MACHINES = """[
    {
        "id": "e784079b449483",
        "name": "late-river-1234",
        "state": "started",
        "region": "ams",
        "image_ref": {
            "registry": "registry.fly.io",
            "repository": "hello-birthday",
            "tag": "deployment-01JABCDEF",
            "digest": "sha256:0123",
            "labels": {}
        },
        "instance_id": "01JINSTANCE",
        "private_ip": "fdaa:0:1:a7b:1::2",
        "created_at": "2026-11-20T10:00:00Z",
        "updated_at": "2026-11-22T10:00:00Z",
        "config": {
            "init": {},
            "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
            "metadata": {"fly_platform_version": "v2", "fly_process_group": "app", "fly_release_id": "R1"},
            "mounts": [
                {"encrypted": true, "path": "/data", "size_gb": 1, "volume": "vol_4a1b", "name": "hello_data"}
            ],
            "image": "registry.fly.io/hello-birthday:deployment-01JABCDEF"
        },
        "checks": [{"name": "servicecheck-00-http-8080", "status": "passing", "output": "200 OK"}],
        "host_status": "ok",
        "cordoned": false
    },
    {
        "id": "148ed193b95e89",
        "state": "stopped",
        "region": "fra",
        "image_ref": {},
        "host_status": "unreachable",
        "cordoned": false,
        "incomplete_config": {
            "metadata": {"process_group": "app"},
            "mounts": [{"path": "/data", "volume": "vol_9c2d"}]
        }
    }
]
"""


def machine(machine_id: str, state: str) -> Machine:
    return Machine(machine_id, state, "ams", "app", (f"vol_{machine_id}",), "")


def test_machines_are_read_from_what_flyctl_prints() -> None:
    first, second = parse_machines(json.loads(TWO_MACHINES))

    assert first == Machine("e784079b449483", "started", "ams", "app", ("vol_4a1b",), "2026-11-20T10:00:00Z")
    # Unreachable host: the config comes from incomplete_config, the group from the older key.
    assert second == Machine("148ed193b95e89", "stopped", "fra", "app", ("vol_9c2d",), "")


def test_null_and_empty_lists_are_no_machines() -> None:
    assert parse_machines(None) == []
    assert parse_machines([]) == []


@pytest.mark.parametrize(
    "document",
    [{"machines": []}, ["e784079b449483"], [{"state": "started"}], [{"id": "e7", "config": "app"}]],
)
def test_anything_else_is_unexpected(document: object) -> None:
    with pytest.raises(UnexpectedOutput):
        parse_machines(document)


def test_a_machine_without_a_state_counts() -> None:
    (only,) = parse_machines([{"id": "e784079b449483"}])
    assert only.state == "unknown"
    assert only.can_write


@pytest.mark.parametrize(
    ("state", "counts"),
    [
        ("started", True),
        ("stopped", True),
        ("suspended", True),
        ("created", True),
        ("replacing", True),
        ("failed", True),
        ("destroying", False),
        ("destroyed", False),
    ],
)
def test_every_state_but_destroyed_and_destroying_can_write(state: str, counts: bool) -> None:
    assert machine("e7", state).can_write is counts


def test_no_machine_and_one_machine_may_deploy() -> None:
    assert one_machine_verdict("app1", []).ok
    verdict = one_machine_verdict("app1", [machine("e7", "stopped"), machine("14", "destroyed")])
    assert verdict.ok
    assert verdict.message == (
        "app1 has one machine (1 destroyed, not counted): e7 in ams: stopped, vol_e7, process group app"
    )


def test_two_machines_are_refused_with_both_named_and_what_to_do() -> None:
    verdict = one_machine_verdict("app1", parse_machines(json.loads(TWO_MACHINES)))

    assert not verdict.ok
    lines = verdict.message.splitlines()
    assert lines[0].startswith("app1 has 2 machines that are not destroyed, and allows one")
    assert lines[1] == (
        "  e784079b449483 in ams: started, vol_4a1b, process group app, created 2026-11-20T10:00:00Z"
    )
    assert lines[2] == "  148ed193b95e89 in fra: stopped, vol_9c2d, process group app"
    assert "fly machine destroy ID --app app1" in lines[3]
    assert "fly scale count 1 --app app1" in lines[3]


def test_destroyed_machines_do_not_make_a_refusal_but_are_mentioned() -> None:
    machines = [machine("a1", "started"), machine("b2", "started"), machine("c3", "destroyed")]
    verdict = one_machine_verdict("app1", machines)

    assert not verdict.ok
    assert "2 machines that are not destroyed (1 destroyed, not counted)" in verdict.message
    assert "c3" not in verdict.message


def test_current_image_is_the_newest_complete_release() -> None:
    releases = [
        {"Version": 3, "Status": "failed", "ImageRef": "img:3"},
        {"Version": 10, "Status": "complete", "ImageRef": "img:10"},
        {"Version": 9, "Status": "complete", "ImageRef": "img:9"},
        {"version": 11, "status": "running", "image_ref": "img:11"},
    ]
    assert current_image(releases) == "img:10"
    assert current_image([{"version": 2, "status": "succeeded", "image_ref": "img:2"}]) == "img:2"
    assert current_image([]) == ""
    assert current_image(None) == ""


def test_missing_secrets_keeps_the_order_asked_for() -> None:
    secrets = [{"Name": "REPLICA_URL", "Digest": "d1"}, {"name": "AWS_ACCESS_KEY_ID"}]
    assert missing_secrets(secrets, ["AWS_SECRET_ACCESS_KEY", "REPLICA_URL", "BUCKET_NAME"]) == [
        "AWS_SECRET_ACCESS_KEY",
        "BUCKET_NAME",
    ]
    assert missing_secrets([], ["REPLICA_URL"]) == ["REPLICA_URL"]


def test_app_name_comes_from_fly_toml(tmp_path: Path) -> None:
    assert app_name(ROOT / "fly.toml") == "hello-birthday"
    nameless = tmp_path / "fly.toml"
    nameless.write_text('primary_region = "ams"\n')
    with pytest.raises(UnexpectedOutput):
        app_name(nameless)


def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str, *argv: str
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_the_command_line_exit_status_is_the_verdict(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_main(monkeypatch, capsys, TWO_MACHINES, "one-machine", "app1")
    assert status == 1
    assert "e784079b449483" in out and "148ed193b95e89" in out

    status, out, _ = run_main(monkeypatch, capsys, "[]\n", "one-machine", "app1")
    assert (status, out) == (0, "app1 has no machine yet: the deploy creates one\n")

    status, _, err = run_main(monkeypatch, capsys, "No machines are available", "one-machine", "app1")
    assert status == 2
    assert "not JSON" in err

    status, out, _ = run_main(monkeypatch, capsys, '[{"Name": "A"}]', "missing-secrets", "A", "B", "C")
    assert (status, out) == (0, "B C\n")

    status, _, err = run_main(monkeypatch, capsys, "", "no-such-command")
    assert status == 2
    assert err.startswith("usage:")
