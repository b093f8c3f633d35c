"""scripts/verify-backup.sh against the whole stack and a real replica in moto.

- A healthy stack passes: the sentinel written through the service comes back from a real
  ``litestream restore``, the copy is intact and fresh, and the heartbeat (a tiny HTTP server on
  127.0.0.1) gets one ping. Litestream's own ``heartbeat-url`` (LITESTREAM_HEARTBEAT_URL) pings too.
- A replica whose objects are deleted under the running stack fails, with the reason on the last line,
  and no heartbeat goes out.
"""

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from service.stack.lease import LEASE_OBJECT
from tests.drills.stack import S3Server, StackFactory, base_env, record_figures
from tests.support import ROOT, put_birthday, put_users, wait_until

VERIFY_SH = ROOT / "scripts" / "verify-backup.sh"


class Heartbeats:
    """An HTTP server on 127.0.0.1 that answers 200 and records the path of every GET."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        lock = threading.Lock()
        paths = self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, path: str) -> int:
        return self.paths.count(path)


@pytest.fixture
def heartbeats() -> Iterator[Heartbeats]:
    receiver = Heartbeats()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def _verify(
    base_url: str, replica_url: str, *args: str, heartbeat_url: str = ""
) -> subprocess.CompletedProcess[str]:
    env = base_env()
    env.update(REPLICA_URL=replica_url, HEARTBEAT_URL=heartbeat_url)
    return subprocess.run(
        [str(VERIFY_SH), "--url", base_url, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        start_new_session=True,
    )


@pytest.mark.slow
def test_a_healthy_stack_passes_and_both_heartbeats_ping(
    stack_factory: StackFactory, s3_server: S3Server, heartbeats: Heartbeats, tmp_path: Path
) -> None:
    replica_url = s3_server.replica_url(f"verify-{uuid.uuid4().hex[:12]}")
    stack = stack_factory(
        tmp_path / "data",
        replica_url=replica_url,
        extra_env={"LITESTREAM_HEARTBEAT_URL": f"{heartbeats.url}/litestream"},
    )
    started = time.monotonic()
    put_users(stack.base_url, "before", 20)

    began = time.monotonic()
    result = _verify(stack.base_url, replica_url, heartbeat_url=f"{heartbeats.url}/verify")
    elapsed = time.monotonic() - began

    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[-1].startswith("verify-backup: OK: the replica holds this run's Backupsentinel"), lines
    assert "integrity ok; 21 rows" in lines[-1]
    assert heartbeats.count("/verify") == 1
    # The token-bearing path of the heartbeat URL is never printed.
    assert "/verify" not in result.stdout

    # A second run writes the sentinel again with another date of birth and finds that one.
    again = _verify(stack.base_url, replica_url, heartbeat_url=f"{heartbeats.url}/verify")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "21 rows" in again.stdout
    assert heartbeats.count("/verify") == 2

    # Litestream's own heartbeat: its monitor looks every 15 s and pings once every database synced.
    wait_until(lambda: heartbeats.count("/litestream") >= 1, 45, "Litestream sent no heartbeat")
    litestream_ping = time.monotonic() - started
    record_figures(
        "verify-backup",
        healthy_run_s=round(elapsed, 1),
        result=lines[-1].split("OK: ", 1)[1],
        litestream_first_heartbeat_s=round(litestream_ping, 1),
    )


@pytest.mark.slow
def test_a_replica_deleted_under_the_running_stack_fails_with_the_reason(
    stack_factory: StackFactory, s3_server: S3Server, heartbeats: Heartbeats, tmp_path: Path
) -> None:
    prefix = f"verify-{uuid.uuid4().hex[:12]}"
    replica_url = s3_server.replica_url(prefix)
    stack = stack_factory(tmp_path / "data", replica_url=replica_url)
    put_users(stack.base_url, "gone", 20)
    client = s3_server.client()

    def replica_objects() -> list[str]:
        return [key for key in s3_server.keys(prefix) if not key.endswith(f"/{LEASE_OBJECT}")]

    def wipe() -> None:
        for key in replica_objects():
            client.delete_object(Bucket=s3_server.bucket, Key=key)

    wait_until(lambda: len(replica_objects()) >= 2, 20, "the stack replicated nothing")
    # Everything Litestream wrote goes; the writer lease stays, so the stack keeps serving writes.
    # And it keeps going while the check runs: a sync that fails once (an upload racing the deletion)
    # makes Litestream forget the replica's position and upload its whole chain again from the local
    # files (replica.go, syncOnce: r.pos cleared on error, then calcPos on the emptied replica), which
    # heals the replica within seconds. What is checked here is a replica that cannot be restored.
    wipe()
    assert put_birthday(stack.base_url, "Afterdeletion") == 204
    checked = threading.Event()

    def keep_wiping() -> None:
        while not checked.wait(0.1):  # every 100 ms until the check is over
            wipe()

    wiper = threading.Thread(target=keep_wiping, name="replica-wiper", daemon=True)
    wiper.start()
    began = time.monotonic()
    try:
        result = _verify(
            stack.base_url, replica_url, "--timeout", "15", heartbeat_url=f"{heartbeats.url}/verify"
        )
    finally:
        checked.set()
        wiper.join()
    elapsed = time.monotonic() - began

    lines = result.stdout.strip().splitlines()
    assert result.returncode == 1, result.stdout + result.stderr
    assert lines[-1].startswith(
        "verify-backup: FAILED: the replica did not show this run's Backupsentinel within 15 s"
    ), lines
    assert heartbeats.count("/verify") == 0
    # The service itself still answers: only the replica is wrong, and the check says so.
    assert put_birthday(stack.base_url, "Stillserving") == 204
    # It tries until the next attempt (2 s apart) would start after the 15 s deadline, then stops.
    assert 12 <= elapsed < 60
    record_figures("verify-backup-deleted-replica", failed_after_s=round(elapsed, 1), reason=lines[-1])


@pytest.mark.slow
def test_bad_settings_are_refused_with_exit_2(tmp_path: Path) -> None:
    result = _verify("http://127.0.0.1:9", "")
    assert result.returncode == 2
    assert result.stdout.strip().splitlines()[-1] == (
        "verify-backup: error: REPLICA_URL is not set: give the replica the service writes to"
    )
    result = _verify("ftp://example", "file:///nowhere")
    assert result.returncode == 2 and "--url must be an http:// or https:// URL" in result.stdout
