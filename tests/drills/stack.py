"""Real processes for the drills: an S3 server (moto) behind a relay, the whole stack started by
scripts/start.sh, write loads, and what a replica holds. The fixtures that hand these to the drills
are in conftest.py; the generic helpers (ports, waiting, HTTP, processes) in tests/support.py.

- ``S3Server``: a real ``moto_server`` on 127.0.0.1. Clients reach it through a ``Relay`` (a small TCP
  relay), so that ``stop()`` makes the store unreachable (connections refused, open ones cut) while
  moto keeps its data, and ``start()`` brings it back on the same port. ``endpoint`` is the relayed
  URL (give it to the service), ``direct_endpoint`` reaches moto always (for checks from the test).
- ``launch_stack``: scripts/start.sh in its own process group, as a ``Stack``, once /readyz answers.
- ``WriteLoad``: bounded concurrent PUTs that record what was acknowledged and when; ``under_write_load``
  starts one on a stack and lets it run before the fault a drill brings.
- ``restore_replica``, ``replica_holds`` and ``lease_lapsed``: what the replica holds, and when a
  writer lease may be taken over; ``record_figures``: a drill's figures, printed and kept.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

import boto3

from service.stack.replica import parse_s3_url
from tests.support import (
    ROOT,
    ClientThreads,
    birthdays,
    free_port,
    http_status,
    put_birthday,
    stop_group,
    username,
    usernames,
    wait_until,
)

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
            time.sleep(0.05)  # polling: until the partition heals
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
                    time.sleep(self.pause_per_chunk)  # the throttle itself: this many bytes a second
        except OSError:
            pass
        finally:
            for conn in (source, sink):
                with self._lock:
                    self._connections.discard(conn)
                _close_quietly(conn)


# Makes a relay of its own to the S3 server: the ``relays`` fixture.
RelayFactory = Callable[[], Relay]


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

    def replica_url(self, prefix: str, relay: Relay | None = None) -> str:
        """The REPLICA_URL of ``prefix`` in the bucket, reached through ``relay`` (default: the outage
        relay that ``stop`` and ``start`` close and reopen)."""
        endpoint = f"http://127.0.0.1:{relay.port}" if relay is not None else self.endpoint
        return f"s3://{self.bucket}/{prefix}?endpoint={endpoint}&region=us-east-1"

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

    def lease_lapsed(self, prefix: str) -> bool:
        """Whether the writer lease under ``prefix`` has lapsed (or was released), by the store's clock,
        as a starting stack judges it (service/stack/lease/s3.py): another may take it over now."""
        answer = self.client().get_object(Bucket=self.bucket, Key=f"{prefix}/writer-lease.json")
        document = json.loads(answer["Body"].read())
        now = parsedate_to_datetime(answer["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = (now - answer["LastModified"]).total_seconds()
        return bool(document.get("released")) or age > float(document["ttl_seconds"])


def wait_lease_lapsed(s3_server: S3Server, replica_url: str, timeout: float = 30.0) -> None:
    """Until the writer lease of ``replica_url``, no longer renewed (its machine died), may be taken
    over: in S3 its object lapses by the store's clock. A file:// replica's lock is the kernel's
    (flock), gone with the stack's process: nothing to wait for."""
    if replica_url.startswith("s3://"):
        prefix = parse_s3_url(replica_url).prefix
        wait_until(lambda: s3_server.lease_lapsed(prefix), timeout, "the writer lease did not lapse", 0.1)


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
            interval=0.1,
        )
    except BaseException:
        stop_group(process)
        raise
    return process, port


@dataclass
class Stack:
    """scripts/start.sh and everything it started (Litestream, gunicorn), in one process group."""

    process: "subprocess.Popen[bytes]"
    base_url: str
    database_path: Path
    log_path: Path
    env: dict[str, str]
    started_at: float
    killed_at: float | None = None

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
        self.killed_at = time.monotonic()
        stop_group(self.process, signal.SIGKILL)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until /readyz answers 200; fails early, with the stack's log, if the stack exits."""
        self.wait_for(
            lambda: http_status(self.url("/readyz"), timeout=1.0) == 200,
            "/readyz 200",
            timeout,
            interval=0.05,
        )

    def wait_logged(self, text: str, timeout: float = 60.0) -> None:
        """Until ``text`` is in the stack's log; fails early, with the log, if the stack exits."""
        self.wait_for(lambda: text in self.logs(), repr(text), timeout)

    def wait_for(
        self, check: Callable[[], object], what: str, timeout: float, interval: float = 0.02
    ) -> None:
        """Until ``check()`` is true: an ``AssertionError`` with the stack's log if the stack exits first
        or ``timeout`` passes."""

        def done() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the stack exited with {self.process.returncode}:\n{self.logs()}")
            return bool(check())

        try:
            wait_until(done, timeout, what, interval=interval)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}:\n{self.logs()}") from None


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


@dataclass
class Machine:
    """A machine of a drill: its volume (a folder) and the replica it writes to. ``start`` boots the
    stack on it, again after a stop, a kill or a lost volume, as ``stack_factory`` does."""

    data: Path
    replica_url: str
    stack_factory: StackFactory

    def start(self, *, wait: bool = True, extra_env: Mapping[str, str] | None = None) -> Stack:
        return self.stack_factory(self.data, replica_url=self.replica_url, wait=wait, extra_env=extra_env)


def launch_stack(
    data_dir: Path, log_path: Path, *, replica_url: str, port: int | None, extra_env: Mapping[str, str] | None
) -> Stack:
    """scripts/start.sh on ``data_dir`` in its own process group, its output into ``log_path``; not
    waited for."""
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
    return Stack(
        process=process,
        base_url=f"http://127.0.0.1:{port}",
        database_path=data_dir / "hello.db",
        log_path=log_path,
        env=env,
        started_at=time.monotonic(),
    )


def _restore(
    replica_url: str, output: Path, *extra: str, timeout: float
) -> "subprocess.CompletedProcess[str]":
    from service.stack.lease import current_replica_url

    env = base_env()
    env.pop("AWS_CA_BUNDLE", None)  # Litestream 0.5.17's S3 client cannot start with it set.
    at = datetime.fromisoformat(extra[extra.index("-timestamp") + 1]) if "-timestamp" in extra else None
    source = current_replica_url(replica_url, env, at)
    return subprocess.run(
        [tool("litestream"), "restore", *extra, "-o", str(output), source],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )


def restore_replica(replica_url: str, output: Path, *extra: str, timeout: float = 120.0) -> float:
    """``litestream restore`` of ``replica_url`` into ``output``, from the generation the writer lease
    names (as of ``-timestamp`` when given); the seconds it took."""
    began = time.monotonic()
    result = _restore(replica_url, output, *extra, timeout=timeout)
    assert result.returncode == 0, f"restore failed: {result.stdout}{result.stderr}"
    return time.monotonic() - began


def restored_usernames(replica_url: str, output: Path, *extra: str) -> set[str]:
    """Every username in a restore of the replica (``restore_replica``) into ``output``."""
    restore_replica(replica_url, output, *extra)
    return usernames(output)


def restored_birthdays(replica_url: str, output: Path) -> dict[str, str]:
    """username -> date of birth of every row in a restore of the replica into ``output``."""
    restore_replica(replica_url, output)
    return birthdays(output)


def replica_holds(replica_url: str, names: Iterable[str], scratch: Path) -> bool:
    """Whether a restore of the replica now (into a new file in ``scratch``) holds every one of ``names``;
    False also while there is nothing to restore yet."""
    scratch.mkdir(parents=True, exist_ok=True)
    output = scratch / f"restore-{time.monotonic_ns()}.db"
    if _restore(replica_url, output, timeout=60.0).returncode != 0:
        return False
    return set(names) <= usernames(output)


def wait_replicated(replica_url: str, names: Iterable[str], scratch: Path, timeout: float = 60.0) -> float:
    """Until the replica holds every one of ``names``; the seconds that took."""
    wanted = set(names)
    return wait_until(
        lambda: replica_holds(replica_url, wanted, scratch),
        timeout,
        f"the replica did not hold {len(wanted)} writes",
        interval=0.2,
    )


@dataclass
class WriteLoad(ClientThreads):
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

    def start(self) -> "WriteLoad":
        self._start_clients(self.threads, self.max_seconds)
        return self

    def stop(self) -> None:
        self._stop_clients(timeout=15)

    def __enter__(self) -> "WriteLoad":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _client(self, index: int, deadline: float) -> None:
        number = 0
        while not self._stopping.is_set() and time.monotonic() < deadline:
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
                time.sleep(self.pause)  # pacing: a steady load, not a flood

    def longest_gap(self) -> float:
        """The longest time between two acknowledged writes, in seconds."""
        times = sorted(self.successes)
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


@contextlib.contextmanager
def under_write_load(
    stack: Stack, warm_up: float = 2.0, *, max_requests: int = 20000, max_seconds: float = 10, **options: Any
) -> Iterator[WriteLoad]:
    """A ``WriteLoad`` on ``stack`` (4 clients unless ``options`` say otherwise) that has run for
    ``warm_up`` seconds when the block begins, so that the fault the block brings lands in the middle
    of steady writes; the load stops when the block ends."""
    load = WriteLoad(stack.base_url, max_requests=max_requests, max_seconds=max_seconds, **options)
    with load:
        # Pacing, not a guess at an event: the drill measures what a fault does to writes that have
        # been flowing (and replicating) for this long.
        time.sleep(warm_up)
        yield load


def killed_under_write_load(stack: Stack, warm_up: float = 2.0, **options: Any) -> WriteLoad:
    """``kill`` (power loss) of ``stack`` after ``warm_up`` seconds of ``under_write_load``; the load."""
    with under_write_load(stack, warm_up, **options) as load:
        stack.kill()
    return load


def record_figures(drill: str, **figures: object) -> None:
    """Print one line of figures; also append it to $DRILL_FIGURES_FILE when that is set."""
    line = f"[{drill}] " + " ".join(f"{key}={value}" for key, value in figures.items())
    print(f"\n{line}")
    target = os.environ.get("DRILL_FIGURES_FILE")
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(line + "\n")
