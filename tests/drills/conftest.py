"""Real processes for the drills: an S3 server (moto), and the whole stack started by scripts/start.sh.

Fixtures:

- ``s3_server`` (session): a real ``moto_server`` on 127.0.0.1 with the bucket ``drills`` created. Clients
  reach it through a small TCP relay, so that ``s3_server.stop()`` makes the store unreachable
  (connections refused, open ones cut) while moto keeps its data, and ``s3_server.start()`` brings it
  back on the same port. ``endpoint`` is the relayed URL (give it to the service), ``direct_endpoint``
  reaches moto always (for checks from the test). ``replica_url(prefix)`` builds a REPLICA_URL.
- ``stack_factory`` (function): ``stack_factory(data_dir, replica_url=...)`` starts scripts/start.sh
  in its own process group and returns a ``Stack`` once /readyz answers; every process group it
  started is killed at teardown, even when the test fails.
  ``port=`` reuses a port (a replacement on the same address), ``wait=False`` returns at once (for
  start-ups that must fail), ``extra_env=`` adds or overrides settings.
- ``replica_url``: a fresh replica path in the bucket for this test.

Helpers: ``WriteLoad`` (bounded concurrent PUTs that record what was acknowledged and when),
``put_birthday``, ``restore_replica``, ``usernames`` (what a database file holds), ``record_figures``.
"""

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import boto3
import pytest

from tests.support import free_port, http_status

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
START_SH = ROOT / "scripts" / "start.sh"
RESTORE_SH = ROOT / "scripts" / "restore.sh"
BUCKET = "drills"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


def tool(name: str) -> str:
    """A program from the project's virtualenv (litestream, moto_server, gunicorn, python)."""
    path = VENV_BIN / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make` to install the virtualenv")
    return str(path)


def base_env() -> dict[str, str]:
    """The environment for child processes: the virtualenv's bin first on PATH, test credentials."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(CREDENTIALS)
    return env


def stop_group(process: "subprocess.Popen[Any]", sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
    """Send ``sig`` to the process group led by ``process`` and reap the leader."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} within {timeout} s")


_THROTTLED_CHUNK = 4096


class Relay:
    """A TCP relay from a fixed loopback port to moto; closing it is an outage that keeps moto's data."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target_port = target_port
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        # Seconds to wait after relaying each chunk of at most _THROTTLED_CHUNK bytes; 0 is full speed.
        self.pause_per_chunk = 0.0
        # A network partition: connections are accepted and held, nothing is forwarded either way.
        self._blackholed = threading.Event()
        self._parked: list[socket.socket] = []  # accepted during a partition, not yet forwarded

    def open(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, set()
        if listener is not None:
            listener.close()
        for conn in connections:
            _close_quietly(conn)

    @property
    def is_open(self) -> bool:
        return self._listener is not None

    def blackhole(self) -> None:
        """A partition: from now on nothing is forwarded, and connections, old and new, hang."""
        self._blackholed.set()

    def heal(self, deliver: bool = False) -> None:
        """The partition ends, and new connections are forwarded again. The connections it held are
        cut (what they carried is never delivered), or with ``deliver`` forwarded at last, as TCP's
        retransmissions deliver what a partition held once it heals."""
        with self._lock:
            parked, self._parked = self._parked, []
            if not deliver:
                held, self._connections = self._connections, set()
        self._blackholed.clear()
        if not deliver:
            for conn in held:
                _close_quietly(conn)
            return
        for client in parked:
            self._forward(client)

    def _hold_while_blackholed(self, conn: socket.socket) -> bool:
        """Wait out a partition; False when the connection was cut meanwhile."""
        if not self._blackholed.is_set():
            return True
        while self._blackholed.is_set():
            time.sleep(0.05)
        with self._lock:
            return conn in self._connections

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self._blackholed.is_set():
                with self._lock:
                    self._connections.add(client)  # held, never answered until the heal
                    self._parked.append(client)
                continue
            if not self._forward(client):
                return

    def _forward(self, client: socket.socket) -> bool:
        """Connect ``client`` to the target and pump both ways; False once the relay is closed."""
        try:
            upstream = socket.create_connection(("127.0.0.1", self._target_port), timeout=5)
        except OSError:
            _close_quietly(client)
            return True
        with self._lock:
            if self._listener is None:
                _close_quietly(client)
                _close_quietly(upstream)
                return False
            self._connections.update((client, upstream))
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        return True

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            source.settimeout(None)
            while chunk := source.recv(_THROTTLED_CHUNK if self.pause_per_chunk else 65536):
                if not self._hold_while_blackholed(source):
                    return
                sink.sendall(chunk)
                if self.pause_per_chunk:
                    time.sleep(self.pause_per_chunk)
        except OSError:
            pass
        finally:
            for conn in (source, sink):
                with self._lock:
                    self._connections.discard(conn)
                _close_quietly(conn)


def _close_quietly(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


class S3Client(Protocol):
    def list_objects_v2(self, **kwargs: Any) -> dict[str, Any]: ...
    def create_bucket(self, **kwargs: Any) -> dict[str, Any]: ...
    def delete_object(self, **kwargs: Any) -> dict[str, Any]: ...
    def put_object(self, **kwargs: Any) -> dict[str, Any]: ...
    def get_object(self, **kwargs: Any) -> dict[str, Any]: ...
    def head_object(self, **kwargs: Any) -> dict[str, Any]: ...


@dataclass
class S3Server:
    """A running moto_server; ``endpoint`` goes through a relay that ``stop``/``start`` close and reopen."""

    process: "subprocess.Popen[bytes]"
    moto_port: int
    relay: Relay
    bucket: str = BUCKET
    credentials: Mapping[str, str] = field(default_factory=lambda: dict(CREDENTIALS))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.relay.port}"

    @property
    def direct_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.moto_port}"

    def replica_url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}?endpoint={self.endpoint}&region=us-east-1"

    def stop(self) -> None:
        """The store becomes unreachable: new connections are refused and open ones are cut."""
        self.relay.close()

    def start(self) -> None:
        """The store is reachable again on the same port, with the data it had."""
        if not self.relay.is_open:
            self.relay.open()

    @contextlib.contextmanager
    def throttled(self, bytes_per_second: int) -> Iterator[None]:
        """The store answers slowly (each direction of each connection) for the ``with`` block."""
        self.relay.pause_per_chunk = _THROTTLED_CHUNK / bytes_per_second
        try:
            yield
        finally:
            self.relay.pause_per_chunk = 0.0

    def client(self) -> S3Client:
        client: S3Client = boto3.client(
            "s3",
            endpoint_url=self.direct_endpoint,
            aws_access_key_id=self.credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.credentials["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        return client

    def keys(self, prefix: str) -> list[str]:
        """Every object key under ``prefix/`` in the bucket."""
        found: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self.client().list_objects_v2(Bucket=self.bucket, Prefix=f"{prefix}/", **token)
            found.extend(item["Key"] for item in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return found
            token = {"ContinuationToken": page["NextContinuationToken"]}


def start_moto(env: Mapping[str, str] | None = None) -> tuple["subprocess.Popen[bytes]", int]:
    """A moto_server on a free loopback port, answering; the caller stops its process group."""
    port = free_port()
    process = subprocess.Popen(
        [tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env={**base_env(), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: http_status(f"http://127.0.0.1:{port}/moto-api/") is not None,
            timeout=30,
            what=f"moto_server did not answer on port {port}",
        )
    except BaseException:
        stop_group(process)
        raise
    return process, port


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    process, port = start_moto()
    relay = Relay(port)
    try:
        relay.open()
        server = S3Server(process=process, moto_port=port, relay=relay)
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        relay.close()
        stop_group(process, signal.SIGTERM)


@pytest.fixture
def replica_url(s3_server: S3Server) -> str:
    """A replica path of its own in the drills bucket."""
    return s3_server.replica_url(f"drill-{uuid.uuid4().hex[:12]}")


@dataclass
class Stack:
    """scripts/start.sh and everything it started (Litestream, gunicorn), in one process group."""

    process: "subprocess.Popen[bytes]"
    base_url: str
    database_path: Path
    log_path: Path
    env: dict[str, str]
    started_at: float

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM to the entrypoint only (Litestream, PID 1's child in the container), as Fly does."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL to every process of the stack at once: a machine that loses power."""
        stop_group(self.process, signal.SIGKILL)


class StackFactory(Protocol):
    def __call__(
        self,
        data_dir: Path,
        *,
        replica_url: str,
        wait: bool = True,
        port: int | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> Stack: ...


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[StackFactory]:
    started: list[Stack] = []

    def start(
        data_dir: Path,
        *,
        replica_url: str,
        wait: bool = True,
        port: int | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> Stack:
        port = port or free_port()
        metrics_port, litestream_port = free_port(), free_port()
        env = base_env()
        env.update(
            HOST="127.0.0.1",
            PORT=str(port),
            METRICS_HOST="127.0.0.1",
            METRICS_PORT=str(metrics_port),
            DATABASE_PATH=str(data_dir / "hello.db"),
            REPLICA_URL=replica_url,
            LITESTREAM_METRICS_ADDR=f"127.0.0.1:{litestream_port}",
            # Quiet by default so that logging does not load the machine; DRILL_LOG_LEVEL=INFO shows
            # every request and Litestream's own lines in the stack-N.log files under tmp_path.
            LOG_LEVEL=os.environ.get("DRILL_LOG_LEVEL", "WARNING"),
            SHUTDOWN_TIMEOUT="10",
            # Set on many CI machines and fatal to Litestream 0.5.17's S3 client: start.sh must drop it.
            AWS_CA_BUNDLE="/etc/ssl/certs/ca-certificates.crt",
        )
        env.update(extra_env or {})
        log_path = tmp_path / f"stack-{len(started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(START_SH)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        stack = Stack(
            process=process,
            base_url=f"http://127.0.0.1:{port}",
            database_path=data_dir / "hello.db",
            log_path=log_path,
            env=env,
            started_at=time.monotonic(),
        )
        started.append(stack)
        if wait:
            wait_ready(stack)
        return stack

    try:
        yield start
    finally:
        for stack in started:
            stop_group(stack.process, signal.SIGKILL)


def wait_ready(stack: Stack, timeout: float = 60.0) -> None:
    """Poll /readyz until it answers 200; fail early, with the stack's log, if the stack exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.process.poll() is not None:
            raise AssertionError(f"the stack exited with {stack.process.returncode}:\n{stack.logs()}")
        if http_status(stack.url("/readyz"), timeout=1.0) == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"the stack did not become ready within {timeout} s:\n{stack.logs()}")


def put_birthday(
    base_url: str, username: str, date_of_birth: str = "1990-05-17", timeout: float = 5.0
) -> int:
    """PUT /hello/<username>; the HTTP status, or 0 when the request got no answer."""
    request = urllib.request.Request(
        f"{base_url}/hello/{username}",
        data=f'{{"dateOfBirth": "{date_of_birth}"}}'.encode(),
        headers={"Content-Type": "application/json"},
        method="PUT",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def get_birthday(base_url: str, username: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET /hello/<username>: the status and the body (0 and "" when nothing answered)."""
    try:
        with urllib.request.urlopen(f"{base_url}/hello/{username}", timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def child_pids(parent: int) -> dict[int, str]:
    """pid -> command line of the processes whose parent is ``parent``."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # The command name in parentheses may hold spaces: the fields after its closing one are fixed.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            children[int(entry.name)] = command.strip()
    return children


def processes_mentioning(text: str) -> list[str]:
    """Command lines of the running processes that contain ``text`` (a data folder, a socket...)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command and str(os.getpid()) != entry.name:
            found.append(f"{entry.name}: {command.strip()}")
    return found


def birthdays(database: Path) -> dict[str, str]:
    """username -> date_of_birth for every row of a database file."""
    import pysqlite3.dbapi2 as sqlite

    connection = sqlite.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return dict(connection.execute("SELECT username, date_of_birth FROM users"))
    finally:
        connection.close()


def restore_replica(replica_url: str, output: Path, *extra: str, timeout: float = 120.0) -> float:
    """``litestream restore`` of ``replica_url`` into ``output``, from the generation the writer lease
    names (as of ``-timestamp`` when given); the seconds it took."""
    from datetime import datetime

    from service.stack.lease import current_replica_url

    env = base_env()
    env.pop("AWS_CA_BUNDLE", None)  # Litestream 0.5.17's S3 client cannot start with it set.
    at = datetime.fromisoformat(extra[extra.index("-timestamp") + 1]) if "-timestamp" in extra else None
    source = current_replica_url(replica_url, env, at)
    began = time.monotonic()
    result = subprocess.run(
        [tool("litestream"), "restore", *extra, "-o", str(output), source],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )
    assert result.returncode == 0, f"restore failed: {result.stdout}{result.stderr}"
    return time.monotonic() - began


def usernames(database: Path) -> set[str]:
    """Every username in a database file, read with the SQLite the service uses."""
    import pysqlite3.dbapi2 as sqlite  # the service's SQLite (3.53), not the stdlib's

    connection = sqlite.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return {row[0] for row in connection.execute("SELECT username FROM users")}
    finally:
        connection.close()


def username(number: int, prefix: str = "u") -> str:
    """A distinct valid username (ASCII letters only) for each number."""
    letters = []
    while True:
        number, digit = divmod(number, 26)
        letters.append(chr(ord("a") + digit))
        if number == 0:
            return prefix + "".join(reversed(letters))


@dataclass
class WriteLoad:
    """PUTs of new users from ``threads`` clients, bounded by ``max_requests`` and ``max_seconds``.

    Every 204 is recorded with the time it arrived: those are the writes the service promised to keep.
    Each client waits ``pause`` seconds between requests (steady load) and moves on to a new name after a
    failure, so that no name is ever both failed and acknowledged.
    """

    base_url: str
    threads: int = 4
    max_requests: int = 5000
    max_seconds: float = 30.0
    pause: float = 0.0
    prefix: str = "w"
    acknowledged: dict[str, float] = field(default_factory=dict)
    # When each acknowledged write was sent (monotonic): a write sent after a fault was answered after it.
    sent_at: dict[str, float] = field(default_factory=dict)
    failures: int = 0
    sent: int = 0
    successes: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> "WriteLoad":
        deadline = time.monotonic() + self.max_seconds
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, args=(index, deadline), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=15)

    def __enter__(self) -> "WriteLoad":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, index: int, deadline: float) -> None:
        number = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self.sent >= self.max_requests:
                    return
                self.sent += 1
            name = username(number * self.threads + index, prefix=self.prefix)
            number += 1
            sent = time.monotonic()
            status = put_birthday(self.base_url, name, timeout=10.0)
            now = time.monotonic()
            with self._lock:
                if status == 204:
                    self.acknowledged[name] = now
                    self.sent_at[name] = sent
                    self.successes.append(now)
                else:
                    self.failures += 1
            if self.pause:
                time.sleep(self.pause)

    def longest_gap(self) -> float:
        """The longest time between two acknowledged writes, in seconds."""
        times = sorted(self.successes)
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


def record_figures(drill: str, **figures: object) -> None:
    """Print one line of figures; also append it to $DRILL_FIGURES_FILE when that is set."""
    line = f"[{drill}] " + " ".join(f"{key}={value}" for key, value in figures.items())
    print(f"\n{line}")
    target = os.environ.get("DRILL_FIGURES_FILE")
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(line + "\n")
