"""Drill 10: faults of the stack's own processes lose no acknowledged write.

- Litestream killed under write load (the kernel's OOM killer does the same): no write sent after its
  death is acknowledged, the stack exits non-zero by itself, and after a restart on the same volume
  nothing acknowledged is missing from the replica.
- Two stop signals 50 ms apart under write load (a double Ctrl-C, a ``kill`` sent twice): the final
  sync still runs; nothing acknowledged is missing from the replica.
- A stop signal during the boot-time restore stops the restore too (no orphan, no half-written file),
  and a second stack on the same volume meanwhile is refused rather than restoring beside it.
"""

import os
import select
import signal
import time
from pathlib import Path

import pytest

from tests.drills.stack import (
    Machine,
    S3Server,
    StackFactory,
    WriteLoad,
    record_figures,
    restored_usernames,
    under_write_load,
)
from tests.support import child_pids, processes_mentioning, usernames, wait_until


@pytest.mark.slow
def test_litestream_killed_under_load_stops_the_writes_and_the_stack(
    machine: Machine, replica_url: str, tmp_path: Path
) -> None:
    stack = machine.start()
    (litestream,) = [pid for pid, command in child_pids(stack.process.pid).items() if "litestream" in command]
    with under_write_load(stack, max_requests=30000, max_seconds=15) as load:
        watch = os.pidfd_open(litestream)
        os.kill(litestream, signal.SIGKILL)
        signalled_at = time.monotonic()
        # The kernel ends a process some time after kill(2) returns (up to milliseconds on a busy
        # machine, longer for a process with many threads): it has died when its pidfd turns
        # readable, which is also what the worker watches.
        assert select.select([watch], [], [], 5.0)[0], "Litestream did not die within 5 s"
        os.close(watch)
        killed_at = time.monotonic()
        code = stack.process.wait(timeout=60)
        exited_after = time.monotonic() - killed_at
    acknowledged_after = [name for name, sent in load.sent_at.items() if sent > killed_at]
    while_dying = [name for name, sent in load.sent_at.items() if signalled_at < sent <= killed_at]

    began = time.monotonic()
    again = machine.start()
    ready_after = time.monotonic() - began
    assert again.terminate() == 0, again.logs()
    missing = set(load.acknowledged) - restored_usernames(replica_url, tmp_path / "restored.db")
    record_figures(
        "litestream-killed",
        acknowledged=len(load.acknowledged),
        death_after_signal_ms=round((killed_at - signalled_at) * 1000, 1),
        acknowledged_while_dying=len(while_dying),
        acknowledged_after_its_death=len(acknowledged_after),
        stack_exit=code,
        stack_exited_after_ms=round(exited_after * 1000),
        restart_to_ready_ms=round(ready_after * 1000),
        missing_from_replica_after_restart=len(missing),
    )
    assert len(load.acknowledged) > 100
    assert not acknowledged_after, f"{len(acknowledged_after)} writes sent after Litestream died got a 204"
    assert code != 0, stack.logs()
    assert "Litestream exited (signal SIGKILL)" in stack.logs(), stack.logs()
    assert not missing, f"{len(missing)} acknowledged writes missing from the replica: {sorted(missing)[:5]}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "signals", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGINT, signal.SIGINT)]
)
def test_repeated_stop_signals_still_let_the_final_sync_finish(
    signals: tuple[signal.Signals, ...], machine: Machine, replica_url: str, tmp_path: Path
) -> None:
    stack = machine.start()
    with under_write_load(stack, max_requests=30000) as load:
        began = time.monotonic()
        for sig in signals:
            stack.process.send_signal(sig)
            time.sleep(0.05)  # the point: signals 50 ms apart, as a double Ctrl-C sends them
        code = stack.process.wait(timeout=60)
        stopped_after = time.monotonic() - began
    missing = set(load.acknowledged) - restored_usernames(replica_url, tmp_path / "restored.db")
    record_figures(
        "repeated-stop-signals",
        signals="+".join(sig.name for sig in signals),
        acknowledged=len(load.acknowledged),
        exit=code,
        stopped_after_ms=round(stopped_after * 1000),
        missing_from_replica=len(missing),
    )
    assert len(load.acknowledged) > 100
    assert code == 0, stack.logs()
    assert "this signal is ignored so that the final sync can finish" in stack.logs()
    assert not missing, f"{len(missing)} acknowledged writes missing from the replica: {sorted(missing)[:5]}"


@pytest.mark.slow
def test_a_stop_signal_during_the_restore_stops_it_and_a_second_restore_is_refused(
    s3_server: S3Server, stack_factory: StackFactory, machine: Machine, replica_url: str, tmp_path: Path
) -> None:
    source = stack_factory(tmp_path / "source", replica_url=replica_url)
    with WriteLoad(source.base_url, threads=4, max_requests=3000, max_seconds=20) as load:
        wait_until(lambda: len(load.acknowledged) + load.failures >= 3000, timeout=30, what="3000 writes")
    assert source.terminate() == 0, source.logs()

    data = machine.data
    with s3_server.throttled(bytes_per_second=4096):
        stack = machine.start(wait=False)

        def restoring_processes() -> list[str]:
            database = str(data / "hello.db")
            return [line for line in processes_mentioning(database) if "litestream restore" in line]

        stack.wait_logged("restoring from")
        stack.wait_for(restoring_processes, "no restore process was running", timeout=30)
        assert stack.process.poll() is None, stack.logs()
        restoring = restoring_processes()
        second = machine.start(wait=False)
        second_code = second.process.wait(timeout=60)
        began = time.monotonic()
        stack.process.send_signal(signal.SIGTERM)
        code = stack.process.wait(timeout=30)
        stopped_after = time.monotonic() - began
        left = processes_mentioning(str(data / "hello.db"))
    leftovers = sorted(path.name for path in data.glob("hello.db*"))
    again = machine.start()
    restored = usernames(again.database_path)
    assert again.terminate() == 0, again.logs()
    record_figures(
        "stop-during-restore",
        restore_processes_before=len(restoring),
        stopped_after_ms=round(stopped_after * 1000),
        exit=code,
        processes_left=len(left),
        second_stack_exit=second_code,
        rows_after_a_full_restore=len(restored),
    )
    assert restoring, "no restore process was running: the drill proves nothing"
    assert code != 0 and stopped_after < 10, stack.logs()
    assert not left, left
    assert not leftovers, leftovers
    assert second_code != 0 and "another stack is running on the volume" in second.logs(), second.logs()
    assert set(load.acknowledged) <= restored


@pytest.mark.slow
def test_killing_the_supervisor_leaves_no_process_behind(machine: Machine) -> None:
    stack = machine.start()
    tree = set(child_pids(stack.process.pid))
    for pid in list(tree):
        tree |= set(child_pids(pid))  # gunicorn's worker
    assert len(tree) == 3, tree  # Litestream, gunicorn's master, its worker
    os.kill(stack.process.pid, signal.SIGKILL)
    stack.process.wait(timeout=10)
    began = time.monotonic()
    wait_until(lambda: not any(_running(pid) for pid in tree), 5, "processes left behind")
    record_figures(
        "supervisor-killed", processes=len(tree), all_gone_after_ms=round((time.monotonic() - began) * 1000)
    )


def _running(pid: int) -> bool:
    """Alive, not a zombie waiting for whoever adopted it to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in {"Z", "X"}
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_sighup_to_the_entrypoint_reloads_gunicorn_without_failing_a_request(machine: Machine) -> None:
    stack = machine.start()
    (gunicorn,) = [pid for pid, command in child_pids(stack.process.pid).items() if "gunicorn" in command]
    (old_worker,) = list(child_pids(gunicorn))
    with under_write_load(stack, 1.0, threads=2, pause=0.01, max_requests=2000, max_seconds=8) as load:
        stack.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: old_worker not in child_pids(gunicorn), timeout=30, what="the old worker did not go"
        )
        time.sleep(1.0)  # pacing: the load goes on against the new worker for a second
    workers = list(child_pids(gunicorn))
    alive = stack.process.poll() is None
    assert stack.terminate() == 0, stack.logs()
    record_figures(
        "sighup-entrypoint", acknowledged=len(load.acknowledged), failed=load.failures, workers=len(workers)
    )
    assert alive and len(workers) == 1 and workers[0] != old_worker
    assert load.failures == 0 and len(load.acknowledged) > 50
