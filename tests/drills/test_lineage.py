"""Drill 8: an old volume or a lost machine's volume comes back; no acknowledged write rolls back.

- Old volume: a copy of the data folder (what a Fly volume snapshot is) put back after the service
  took more writes. Litestream alone would make the old database the replica's newest state.
- Diverged volume: machine A is killed under load with writes the replica never got; machine B
  restores from the replica and takes writes (some to A's users); then A's volume comes back. Litestream
  alone would upload A's history on top of B's.

Both: from the first answer after /readyz turns 200 the service serves the newest state, and a restore
on an empty volume afterwards holds every acknowledged write (newest per user).
"""

import json
import re
import shutil
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from service.birthdays import greeting
from tests.drills.stack import (
    RelayFactory,
    S3Server,
    StackFactory,
    killed_under_write_load,
    record_figures,
    restored_birthdays,
    restored_usernames,
    wait_lease_lapsed,
)
from tests.support import child_pids, get_birthday, metrics_text, put_birthday


def _served(base_url: str, expected: dict[str, str]) -> dict[str, str]:
    """The users whose GET does not answer with the greeting for the expected date of birth."""
    today = datetime.now(UTC).date()  # the service's TIMEZONE is UTC
    wrong = {}
    for name, born in expected.items():
        status, body = get_birthday(base_url, name)
        message = json.loads(body).get("message") if status == 200 else None
        if message != greeting(name, date.fromisoformat(born), today):
            wrong[name] = f"{status} {body[:80]}"
    return wrong


@pytest.mark.slow
def test_old_volume_coming_back_serves_and_keeps_the_newest_state(
    s3_or_file_replica: str, stack_factory: StackFactory, tmp_path: Path
) -> None:
    replica_url = s3_or_file_replica
    data = tmp_path / "data"
    stack = stack_factory(data, replica_url=replica_url)
    first = {f"Old{chr(65 + i // 26)}{chr(97 + i % 26)}": "1980-01-15" for i in range(50)}
    assert all(put_birthday(stack.base_url, name, born) == 204 for name, born in first.items())
    assert stack.terminate() == 0, stack.logs()
    snapshot = tmp_path / "snapshot"
    shutil.copytree(data, snapshot)

    stack = stack_factory(data, replica_url=replica_url)
    newest = dict(first)
    for name in list(first)[:25]:
        newest[name] = "1985-06-20"
    for i in range(50):
        newest[f"New{chr(65 + i // 26)}{chr(97 + i % 26)}"] = "1990-11-03"
    changed = {name: born for name, born in newest.items() if first.get(name) != born}
    assert all(put_birthday(stack.base_url, name, born) == 204 for name, born in changed.items())
    assert stack.terminate() == 0, stack.logs()

    shutil.rmtree(data)
    shutil.copytree(snapshot, data)
    began = time.monotonic()
    stack = stack_factory(data, replica_url=replica_url)
    ready_after = time.monotonic() - began
    wrong = _served(stack.base_url, newest)
    logs = stack.logs()
    boot_lines = metrics_text(stack.env["METRICS_PORT"]).splitlines()
    metrics = "\n".join(line for line in boot_lines if line.startswith("hello_boot_"))
    assert stack.terminate() == 0, logs
    restored = restored_birthdays(replica_url, tmp_path / "restored.db")
    lost = {name for name, born in newest.items() if restored.get(name) != born}
    set_aside = sorted(path.name for path in data.glob("hello.db.set-aside-*[0-9Z]"))
    record_figures(
        "old-volume",
        replica=replica_url.split(":")[0],
        acknowledged=len(newest),
        wrong_answers=len(wrong),
        lost_after_restore=len(lost),
        boot_to_ready_ms=round(ready_after * 1000),
        set_aside=len(set_aside),
    )
    assert not wrong, f"{len(wrong)} of {len(newest)} answers are old or missing: {list(wrong.items())[:3]}"
    assert not lost, f"{len(lost)} acknowledged writes missing after a restore: {sorted(lost)[:5]}"
    assert "is behind the replica" in logs, logs
    assert len(set_aside) == 1, set_aside
    assert 'hello_boot_outcome{outcome="behind"} 1.0' in metrics, metrics


@pytest.mark.slow
def test_diverged_volume_coming_back_loses_nothing_from_either_machine(
    s3_or_file_replica: str, s3_server: S3Server, stack_factory: StackFactory, tmp_path: Path
) -> None:
    replica_url = s3_or_file_replica
    volume_a, volume_b = tmp_path / "a", tmp_path / "b"
    # Another machine may take the writer lease once the dead one's has lapsed: a short lease keeps
    # the drill short (the default is 30 s).
    lease = {"WRITER_LEASE_TTL": "3"}
    machine_a = stack_factory(volume_a, replica_url=replica_url, extra_env=lease)
    shared = {f"Both{chr(65 + i // 26)}{chr(97 + i % 26)}": "1970-02-10" for i in range(20)}
    assert all(put_birthday(machine_a.base_url, name, born) == 204 for name, born in shared.items())
    load = killed_under_write_load(machine_a, prefix="a")
    written_by_a = dict.fromkeys(load.acknowledged, "1990-05-17") | shared

    # Machine B: a fresh volume, restored from the replica, which lacks A's last writes.
    wait_lease_lapsed(s3_server, replica_url)
    machine_b = stack_factory(volume_b, replica_url=replica_url, extra_env=lease)
    unsynced = {name for name in written_by_a if get_birthday(machine_b.base_url, name)[0] != 200}
    written_by_b = {f"Bee{chr(65 + i // 26)}{chr(97 + i % 26)}": "2001-09-09" for i in range(40)}
    written_by_b |= dict.fromkeys(list(shared)[:10], "1999-12-24")  # newer than A's for the same users
    assert all(put_birthday(machine_b.base_url, name, born) == 204 for name, born in written_by_b.items())
    assert machine_b.terminate() == 0, machine_b.logs()

    # A's volume comes back.
    began = time.monotonic()
    again = stack_factory(volume_a, replica_url=replica_url, extra_env=lease)
    ready_after = time.monotonic() - began
    newest = written_by_a | written_by_b
    wrong = _served(again.base_url, newest)
    logs = again.logs()
    assert again.terminate() == 0, logs
    restored = restored_birthdays(replica_url, tmp_path / "restored.db")
    lost_a = {name for name in written_by_a if restored.get(name) != newest[name]}
    lost_b = {name for name in written_by_b if restored.get(name) != written_by_b[name]}
    reapplied = re.search(r"re-applied (\d+) of the (\d+) rows", logs)
    record_figures(
        "diverged-volume",
        replica=replica_url.split(":")[0],
        acknowledged_by_a=len(written_by_a),
        not_in_replica_when_a_died=len(unsynced),
        acknowledged_by_b=len(written_by_b),
        wrong_answers=len(wrong),
        lost_from_a=len(lost_a),
        lost_from_b=len(lost_b),
        rows_reapplied=reapplied.group(1) if reapplied else None,
        boot_to_ready_ms=round(ready_after * 1000),
    )
    assert unsynced, "machine A had no write outside the replica: the drill would prove nothing"
    assert not wrong, f"{len(wrong)} answers are not the newest: {list(wrong.items())[:3]}"
    assert not lost_a and not lost_b, (sorted(lost_a)[:5], sorted(lost_b)[:5])
    assert "diverged" in logs and reapplied, logs
    assert int(reapplied.group(1)) >= len(unsynced)


@pytest.mark.slow
def test_a_stack_killed_between_restore_and_first_sync_still_reapplies_the_rows(
    s3_server: S3Server, stack_factory: StackFactory, relays: RelayFactory, tmp_path: Path
) -> None:
    """The re-apply list survives a crash after the restore: the next boot sets the restored copy aside
    too, adds it to the list (never overwriting it), and the first set-aside rows still arrive."""
    relay = relays()
    replica_url = s3_server.replica_url(f"marker-crash-{tmp_path.name}", relay)
    volume_a, volume_b = tmp_path / "a", tmp_path / "b"
    lease = {"WRITER_LEASE_TTL": "3"}
    machine_a = stack_factory(volume_a, replica_url=replica_url, extra_env=lease)
    load = killed_under_write_load(machine_a, prefix="a")
    wait_lease_lapsed(s3_server, replica_url)
    machine_b = stack_factory(volume_b, replica_url=replica_url, extra_env=lease)
    unsynced = {name for name in load.acknowledged if get_birthday(machine_b.base_url, name)[0] != 200}
    assert put_birthday(machine_b.base_url, "Beeafter") == 204
    assert machine_b.terminate() == 0, machine_b.logs()

    # A's volume comes back; it is killed after the restore, before Litestream's first sync.
    crashing = stack_factory(volume_a, replica_url=replica_url, extra_env=lease, wait=False)
    crashing.wait_logged("restored ")
    relay.blackhole()  # the first sync cannot happen
    crashing.wait_for(
        lambda: any("litestream replicate" in line for line in child_pids(crashing.process.pid).values()),
        "Litestream did not start after the restore",
        timeout=30,
    )
    crashing.kill()
    pending = (volume_a / ".hello.db.reapply-pending").read_text().splitlines()
    relay.heal()

    again = stack_factory(volume_a, replica_url=replica_url, extra_env=lease)
    logs = again.logs()
    assert again.terminate() == 0, logs
    restored = restored_usernames(replica_url, tmp_path / "restored.db")
    lost = set(load.acknowledged) - restored
    record_figures(
        "marker-crash",
        acknowledged_by_a=len(load.acknowledged),
        not_in_replica_when_a_died=len(unsynced),
        listed_after_the_crash=len(pending),
        set_aside_files=len(list(volume_a.glob("hello.db.set-aside-*[0-9Z]"))),
        lost=len(lost),
    )
    assert unsynced, "machine A had no write outside the replica: the drill would prove nothing"
    assert len(pending) == 1
    assert not lost, f"{len(lost)} of A's acknowledged writes never arrived: {sorted(lost)[:5]}"
    assert "Beeafter" in restored
    assert not (volume_a / ".hello.db.reapply-pending").exists(), "the list is emptied once re-applied"
