"""Drill: a writer cut off from the store, or frozen, never acknowledges a write once its lease can pass.

Two whole stacks (scripts/start.sh, real Litestream, gunicorn) on one replica in moto's S3 server,
each reaching the store through a TCP relay of its own, at ``WRITER_LEASE_TTL=6`` (renewed every 2 s,
writes stop 3.8 s after the last renewal was sent: ``service/lease_deadline.py``).

- **Partition**: A takes writes; A's relay is blackholed (nothing forwarded, connections held) while
  A's clients still reach A. B starts on an empty volume (restarted, as a platform would, until the
  lease has lapsed), takes over and takes writes. The partition heals.
- **Partition, delivered**: the same, but when the partition heals the relay delivers what it held
  (as TCP's retransmissions would): requests A sent before its deadline reach the store after B took
  over. Only the generations keep them out of B's history.
- **Pause**: A takes writes; every process of A is stopped (SIGSTOP) for longer than the TTL. B takes
  over and takes writes; A is resumed, and its clients carry on.

After each:
1. the writes A acknowledged after its lease could pass: 0. "Could pass" is the last Last-Modified
   of A's lease object (polled directly from moto) plus the TTL, by the store's clock;
2. B's acknowledged writes missing from the replica when B stops: 0, and the replica restores and
   passes ``integrity_check``;
3. once A's volume comes back (the lineage path sets it aside and re-applies its newer rows), the
   writes acknowledged by either machine missing from the replica: 0.

B took the lease over from a holder that did not release it, so B writes a new generation of the
replica (``<path>/generations/<name>``, ``service/stack/lease/``); whatever A still sends lands in A's.
"""

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.drills.stack import (
    RelayFactory,
    S3Server,
    Stack,
    StackFactory,
    WriteLoad,
    killed_under_write_load,
    record_figures,
    restored_usernames,
    under_write_load,
    wait_lease_lapsed,
)
from tests.support import child_pids, http_status, integrity, metrics_text, usernames, wait_until

TTL = 6


class LeaseWatch:
    """Polls the lease object directly from moto: when each holder last wrote it, by the store's clock."""

    def __init__(self, s3_server: S3Server, prefix: str) -> None:
        self._client = s3_server.client()
        self._bucket = s3_server.bucket
        self._key = f"{prefix}/writer-lease.json"
        self.last_write: dict[str, float] = {}  # data folder of the holder -> Last-Modified (epoch s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "LeaseWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                answer = self._client.get_object(Bucket=self._bucket, Key=self._key)
                document = json.loads(answer["Body"].read())
            except Exception:  # noqa: BLE001 - not there yet, or a read that raced a write
                continue
            holder = str(document.get("holder", {}).get("database", ""))
            self.last_write[holder] = answer["LastModified"].timestamp()


def _wall_to_monotonic(wall: float) -> float:
    return wall - (time.time() - time.monotonic())


def _stack_processes(stack: Stack) -> list[int]:
    """The supervisor and every process below it (Litestream, gunicorn's master and worker)."""
    found = [stack.process.pid]
    for pid in found:
        found.extend(child_pids(pid))
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _take_over(stack_factory: StackFactory, data: Path, replica_url: str) -> Stack:
    """Start B until it takes the lease (a refused start exits at once; the platform restarts it)."""
    give_up = time.monotonic() + 6 * TTL
    while True:
        stack = stack_factory(
            data, replica_url=replica_url, wait=False, extra_env={"WRITER_LEASE_TTL": str(TTL)}
        )
        while stack.process.poll() is None:
            if http_status(stack.url("/readyz"), timeout=1.0) == 200:
                return stack
            time.sleep(0.1)  # polling: until B answers or exits
        logs = stack.logs()
        assert time.monotonic() < give_up, f"B never took the lease over:\n{logs}"
        if "Connection in use" in logs:
            # The free port picked for B was taken meanwhile (an outgoing connection of the load
            # can land on it): start B again on another one, as a platform would restart it.
            continue
        assert "another writer holds" in logs, logs
        time.sleep(1.0)  # pacing: the platform restarts a refused machine a second later


def _root_generation_keys(s3_server: S3Server, prefix: str) -> set[str]:
    """The LTX files of the root generation (A's): whatever A uploads after B took over lands there."""
    return {key for key in s3_server.keys(prefix) if key.endswith(".ltx") and "/generations/" not in key}


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["partition", "partition-delivered", "pause"])
def test_a_cut_off_or_frozen_writer_never_acknowledges_beside_the_next(
    fault: str,
    s3_server: S3Server,
    stack_factory: StackFactory,
    relays: RelayFactory,
    tmp_path: Path,
) -> None:
    prefix = f"fenced-{fault}-{tmp_path.name}"
    relay_a, relay_b = relays(), relays()
    data_a, data_b = tmp_path / "a", tmp_path / "b"
    url_a, url_b = s3_server.replica_url(prefix, relay_a), s3_server.replica_url(prefix, relay_b)
    env = {"WRITER_LEASE_TTL": str(TTL)}
    a = stack_factory(data_a, replica_url=url_a, extra_env=env)

    with LeaseWatch(s3_server, prefix) as watch:
        with under_write_load(
            a, threads=2, pause=0.005, max_requests=40_000, max_seconds=60, prefix="a"
        ) as load_a:
            began = time.monotonic()
            pids = _stack_processes(a)
            if fault.startswith("partition"):
                relay_a.blackhole()
            else:
                _signal_all(pids, signal.SIGSTOP)
            b = _take_over(stack_factory, data_b, url_b)
            took_over_after = time.monotonic() - began
            in_a_generation = _root_generation_keys(s3_server, prefix)
            metrics_b = metrics_text(b.env["METRICS_PORT"])
            # B takes writes for a while (the warm-up) before A comes back.
            with under_write_load(
                b, 3.0, threads=2, pause=0.005, max_requests=20_000, max_seconds=30, prefix="b"
            ) as load_b:
                if fault.startswith("partition"):
                    relay_a.heal(deliver=fault == "partition-delivered")
                else:
                    _signal_all(pids, signal.SIGCONT)
                # The point: A is back (its held requests delivered, or its processes resumed) for
                # long enough to acknowledge anything it still would; it must not.
                time.sleep(4.0)
        a_wrote_after_takeover = len(_root_generation_keys(s3_server, prefix) - in_a_generation)
        a_holder = str(data_a / "hello.db")
        could_pass_at = _wall_to_monotonic(watch.last_write[a_holder] + TTL)

    late = [name for name, at in load_a.acknowledged.items() if at > could_pass_at]
    a_status_after = http_status(a.url("/readyz"), timeout=2.0)

    # B stops gracefully: its final sync, then the replica must hold every write it acknowledged.
    assert b.terminate() == 0, b.logs()
    stack_b_copy = tmp_path / "after-b.db"
    missing_b = set(load_b.acknowledged) - restored_usernames(url_b, stack_b_copy)
    integrity_b = integrity(stack_b_copy)

    # A's volume comes back: the lineage path sets it aside and re-applies its newer rows.
    a.kill()
    again = stack_factory(data_a, replica_url=url_a, extra_env=env)
    assert again.terminate() == 0, again.logs()
    final = restored_usernames(url_a, tmp_path / "final.db")
    missing_a = set(load_a.acknowledged) - final
    missing_b_final = set(load_b.acknowledged) - final

    record_figures(
        f"fenced-{fault}",
        lease_ttl_s=TTL,
        b_took_over_after_s=round(took_over_after, 1),
        a_acknowledged=len(load_a.acknowledged),
        a_acknowledged_after_lease_could_pass=len(late),
        a_readiness_after=a_status_after,
        a_objects_written_to_its_generation_after_takeover=a_wrote_after_takeover,
        b_acknowledged=len(load_b.acknowledged),
        b_missing_when_b_stops=len(missing_b),
        replica_integrity=integrity_b,
        missing_after_a_returns=len(missing_a) + len(missing_b_final),
    )
    assert "writing generation" in b.logs(), b.logs()
    # B's metrics name the generation it writes, not the root A wrote.
    assert re.search(
        r'hello_replica_generation_info\{generation="\d{8}T\d{6}Z-[0-9a-f]{8}"\} 1\.0', metrics_b
    )
    assert load_a.acknowledged and load_b.acknowledged
    assert not late, f"A acknowledged {len(late)} writes after its lease could pass"
    assert not missing_b, f"{len(missing_b)} of B's acknowledged writes are missing from the replica"
    assert integrity_b == "ok"
    assert not missing_a and not missing_b_final, (len(missing_a), len(missing_b_final))


@pytest.mark.slow
def test_a_machine_refused_while_another_writes_still_delivers_its_rows(
    s3_server: S3Server, stack_factory: StackFactory, tmp_path: Path
) -> None:
    """A is killed with writes the replica never got; B takes over and keeps serving; A's volume comes
    back while B holds the lease: A is refused, but its rows reach B's replica (merged newest-wins)."""
    replica_url = s3_server.replica_url(f"stranded-{tmp_path.name}")
    lease = {"WRITER_LEASE_TTL": "3"}  # B merges deliveries once per TTL
    a = stack_factory(tmp_path / "a", replica_url=replica_url, extra_env=lease)
    load = killed_under_write_load(a, prefix="a")
    wait_lease_lapsed(s3_server, replica_url)
    b = stack_factory(tmp_path / "b", replica_url=replica_url, extra_env=lease)
    with WriteLoad(
        b.base_url, threads=2, pause=0.01, max_requests=5000, max_seconds=30, prefix="b"
    ) as load_b:
        refused = stack_factory(tmp_path / "a", replica_url=replica_url, extra_env=lease, wait=False)
        code = refused.process.wait(timeout=60)
        began = time.monotonic()
        merged_metric = 0.0
        while time.monotonic() - began < 20 and merged_metric == 0:
            merged_metric = _metric(b.env["METRICS_PORT"], 'hello_set_aside_merged{kind="rows_written"}')
            time.sleep(0.2)  # polling: until B has merged A's rows
        merged_after = time.monotonic() - began
        again = stack_factory(tmp_path / "a", replica_url=replica_url, extra_env=lease, wait=False)
        again_code = again.process.wait(timeout=60)
    assert b.terminate() == 0, b.logs()
    restored = restored_usernames(replica_url, tmp_path / "restored.db")
    lost_a = set(load.acknowledged) - restored
    lost_b = set(load_b.acknowledged) - restored
    delivered = s3_server.keys(f"stranded-{tmp_path.name}/merged")
    record_figures(
        "stranded-rows",
        a_acknowledged=len(load.acknowledged),
        refused_exit=code,
        rows_merged_by_b=merged_metric,
        merged_after_s=round(merged_after, 1),
        b_acknowledged=len(load_b.acknowledged),
        lost_from_a=len(lost_a),
        lost_from_b=len(lost_b),
        deliveries=len(delivered),
    )
    assert code != 0 and "another writer holds" in refused.logs(), refused.logs()
    assert "delivered a copy" in refused.logs(), refused.logs()
    assert merged_metric > 0, b.logs()
    assert not lost_a and not lost_b, (len(lost_a), len(lost_b))
    assert again_code != 0 and "delivered a copy" not in again.logs(), "delivered twice"
    assert len(delivered) == 1 and not s3_server.keys(f"stranded-{tmp_path.name}/set-aside")


def _metric(port: str, series: str) -> float:
    for line in metrics_text(port).splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.slow
def test_a_restore_longer_than_the_lease_keeps_one_writer_at_a_time(
    s3_server: S3Server,
    stack_factory: StackFactory,
    relays: RelayFactory,
    tmp_path: Path,
) -> None:
    """The lease is renewed from the moment it is taken: a slow restore (here 3+ TTLs, through a
    throttled relay) does not let a second stack, trying all along, take it."""
    prefix = f"boot-lapse-{tmp_path.name}"
    relay_a, relay_b = relays(), relays()
    url_a, url_b = s3_server.replica_url(prefix, relay_a), s3_server.replica_url(prefix, relay_b)
    env = {"WRITER_LEASE_TTL": "3"}
    seed = stack_factory(tmp_path / "seed", replica_url=url_a, extra_env=env)
    with WriteLoad(seed.base_url, threads=4, max_requests=8000, max_seconds=20, prefix="s") as load:
        wait_until(lambda: len(load.acknowledged) >= 8000 or load.sent >= 8000, 60, "8000 writes sent")
    assert seed.terminate() == 0, seed.logs()  # releases the lease

    relay_a.pause_per_chunk = 0.1  # about 40 KB/s: the restore takes several TTLs
    a = stack_factory(tmp_path / "a", replica_url=url_a, extra_env=env, wait=False)
    a.wait_logged("restoring from")
    began = time.monotonic()
    attempts = refused = 0
    while http_status(a.url("/readyz"), timeout=1.0) != 200:
        assert a.process.poll() is None and time.monotonic() - began < 120, a.logs()
        b = stack_factory(tmp_path / "b", replica_url=url_b, extra_env=env, wait=False)
        attempts += 1
        code = b.process.wait(timeout=60)
        refused += code != 0 and "another writer holds" in b.logs()
        assert code != 0, f"a second writer started while A was restoring:\n{b.logs()}"
        time.sleep(0.5)  # pacing: B is tried again every half second all along
    restore_seconds = time.monotonic() - began
    relay_a.pause_per_chunk = 0.0
    late = stack_factory(tmp_path / "b", replica_url=url_b, extra_env=env, wait=False)
    late_code = late.process.wait(timeout=60)
    restored = usernames(a.database_path)
    assert a.terminate() == 0, a.logs()
    record_figures(
        "boot-lapse",
        lease_ttl_s=3,
        restore_to_ready_s=round(restore_seconds, 1),
        second_stack_attempts=attempts,
        refused=refused,
        rows_restored=len(restored),
    )
    assert restore_seconds > 3 * 3, "the restore was not longer than the lease: the drill proves nothing"
    assert refused == attempts >= 3
    assert late_code != 0
    assert set(load.acknowledged) <= restored
