"""Helpers for tests that run real processes: free loopback ports, waiting on events, HTTP, gunicorn,
processes, what a database file holds, small file systems. The drills' own (the whole stack, the S3
server, write loads) are in tests/drills/stack.py."""

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


# A stand-in for flyctl: a script of its own (see its docstring), for the tests of the Fly scripts.
FAKE_FLY = ROOT / "tests" / "fakes" / "flyctl"


def install_fake_fly(folder: Path) -> Path:
    """``folder`` (made here) holding the stand-in flyctl as ``fly``: to go first on PATH, and to be
    named in FAKE_FLY_HOME, where the stand-in keeps its calls and state."""
    folder.mkdir()
    (folder / "fly").symlink_to(FAKE_FLY)
    return folder


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Deadline:
    """When a wait began and how long it may take; ``passed()`` is False while time is left, and raises
    ``TimeoutError`` naming what was awaited once it is not."""

    def __init__(self, timeout: float, what: str) -> None:
        self.began = time.monotonic()
        self.timeout = timeout
        self.what = what

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def passed(self) -> bool:
        if self.elapsed() >= self.timeout:
            raise TimeoutError(f"{self.what}: not within {self.timeout} s")
        return False


def wait_until(check: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> float:
    """Call ``check`` until it returns something true; the seconds that took. ``TimeoutError`` naming
    ``what`` once ``timeout`` seconds have passed without."""
    deadline = _Deadline(timeout, what)
    while not check() and not deadline.passed():
        time.sleep(interval)
    return deadline.elapsed()


async def wait_until_async(
    check: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> float:
    """``wait_until`` for a test whose event loop must keep running meanwhile (a server in-process)."""
    deadline = _Deadline(timeout, what)
    while not check() and not deadline.passed():
        await asyncio.sleep(interval)
    return deadline.elapsed()


def http_status(request: "str | urllib.request.Request", timeout: float = 2.0) -> int | None:
    """The status of a request's answer (a GET of a URL), or None when nothing answers."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:  # urllib.error.URLError included
        return None


def wait_for_status(url: str, expected: int = 200, timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers ``expected``; fail after ``timeout`` seconds."""
    seen: list[int | None] = [None]

    def answered() -> bool:
        seen.append(http_status(url))
        return seen[-1] == expected

    try:
        wait_until(answered, timeout, f"{url} did not answer {expected}", interval=0.1)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc} (last: {seen[-1]})") from None


def metrics_text(port: int | str) -> str:
    """One scrape of the metrics port 127.0.0.1:``port``: the exposition text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


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
    return http_status(request, timeout) or 0


def get_birthday(base_url: str, username: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET /hello/<username>: the status and the body (0 and "" when nothing answered)."""
    try:
        with urllib.request.urlopen(f"{base_url}/hello/{username}", timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def put_users(base_url: str, prefix: str, count: int) -> set[str]:
    """PUTs of ``count`` new users, named from ``prefix``; their names, once every one got a 204."""
    names = {username(number, prefix=prefix) for number in range(count)}
    statuses = {name: put_birthday(base_url, name) for name in sorted(names)}
    failed = {name: status for name, status in statuses.items() if status != 204}
    assert not failed, f"writes failed: {failed}"
    return names


def username(number: int, prefix: str = "u") -> str:
    """A distinct valid username (ASCII letters only) for each number."""
    letters = []
    while True:
        number, digit = divmod(number, 26)
        letters.append(chr(ord("a") + digit))
        if number == 0:
            return prefix + "".join(reversed(letters))


@dataclass
class ClientThreads:
    """Client threads, each running ``_client(index, deadline)`` until ``stop`` is asked (``_stopping``)
    or the deadline passes: the bounded loads and probes of the tests that run real servers."""

    _stopping: threading.Event = field(default_factory=threading.Event, kw_only=True, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, kw_only=True, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, kw_only=True, repr=False)

    def _client(self, index: int, deadline: float) -> None:
        raise NotImplementedError

    def _start_clients(self, count: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for index in range(count):
            thread = threading.Thread(target=self._client, args=(index, deadline), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _stop_clients(self, timeout: float) -> bool:
        """Ask every client to stop and wait for each up to ``timeout``; whether all stopped."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=timeout)
        return not any(thread.is_alive() for thread in self._threads)


def start_gunicorn(port: int, log: Path | None = None, **settings: str) -> "subprocess.Popen[bytes]":
    """The production server (gunicorn -c gunicorn.conf.py, this virtualenv's) on 127.0.0.1:``port`` in
    its own session, with ``settings`` (DATABASE_PATH or DATABASE_URL, ...) over the defaults here; its
    output appended to ``log``, or left on this process's."""
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "METRICS_PORT": str(free_port()),
        "SHUTDOWN_TIMEOUT": "10",
        **settings,
    }
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    with contextlib.ExitStack() as files:
        output = files.enter_context(log.open("ab")) if log is not None else None
        return subprocess.Popen(
            [gunicorn, "-c", "gunicorn.conf.py"],
            cwd=ROOT,
            env=env,
            start_new_session=True,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
        )


def stop(process: "subprocess.Popen[Any]", timeout: float = 30.0) -> int:
    """SIGTERM, then SIGKILL of the whole group if it does not exit within ``timeout``; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(process)
    return process.returncode


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


@contextlib.contextmanager
def killed_at_exit(process: "subprocess.Popen[bytes]") -> Iterator["subprocess.Popen[bytes]"]:
    """``process``, whose whole group is killed when the block ends while it still runs."""
    try:
        yield process
    finally:
        if process.poll() is None:
            stop_group(process)


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


def _server_sockets(server_port: int) -> dict[int, tuple[str, int, int]]:
    """The kernel's view of the TCP connections to 127.0.0.1:``server_port`` (Linux's /proc/net/tcp):
    client port -> (state, bytes received and not yet read, inode; 0 until the server accepts it)."""
    sockets = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
        if local_port == server_port:
            sockets[remote_port] = (fields[3], int(fields[4].split(":")[1], 16), int(fields[9]))
    return sockets


def server_has_read(server_port: int, client_ports: Iterable[int]) -> bool:
    """Whether the server on ``server_port`` has accepted each of these clients' connections and read
    every byte they sent."""
    sockets = _server_sockets(server_port)
    return all(
        port in sockets and sockets[port][0] == "01" and sockets[port][1] == 0 and sockets[port][2] != 0
        for port in client_ports
    )


def server_has_closed(server_port: int, client_ports: Iterable[int]) -> bool:
    """Whether the server on ``server_port`` has closed its end of each of these clients' connections."""
    sockets = _server_sockets(server_port)
    # 01: established; 08: CLOSE_WAIT, the client closed and the server has not yet.
    return not any(sockets.get(port, ("",))[0] in {"01", "08"} for port in client_ports)


def client_port(conn: "socket.socket | asyncio.StreamWriter") -> int:
    """The local port of a client's connection."""
    if isinstance(conn, asyncio.StreamWriter):
        port: int = conn.get_extra_info("sockname")[1]
    else:
        port = conn.getsockname()[1]
    return port


def _read_only(database: Path, sql: str) -> list[tuple[Any, ...]]:
    import pysqlite3.dbapi2 as sqlite  # the service's SQLite (3.53), not the stdlib's

    connection = sqlite.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return list(connection.execute(sql))
    finally:
        connection.close()


def birthdays(database: Path) -> dict[str, str]:
    """username -> date_of_birth for every row of a database file."""
    return {
        str(name): str(born)
        for name, born in _read_only(database, "SELECT username, date_of_birth FROM users")
    }


def usernames(database: Path) -> set[str]:
    """Every username in a database file, read with the SQLite the service uses."""
    return {str(name) for (name,) in _read_only(database, "SELECT username FROM users")}


def integrity(database: Path) -> str:
    """SQLite's ``PRAGMA integrity_check`` of a database file: "ok", or what is wrong."""
    return str(_read_only(database, "PRAGMA integrity_check")[0][0])


class Tmpfs:
    """A real, small file system (tmpfs) at ``path``, for disk-full tests; needs root or sudo.

    As root it mounts directly; as another user (GitHub's runner) through passwordless ``sudo -n``,
    owned by that user. ``grow`` resizes it in place (files stay), as `fly volumes extend` grows a
    volume under a running Machine; ``unmount`` (also on teardown) takes it away with its files.
    """

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        owner = f"uid={os.getuid()},gid={os.getgid()},mode=0755"
        self._run(["mount", "-t", "tmpfs", "-o", f"size={size},{owner}", "tmpfs", str(path)])

    @staticmethod
    def _run(argv: list[str], check: bool = True) -> None:
        prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
        subprocess.run([*prefix, *argv], check=check)

    def grow(self, size: str) -> None:
        self._run(["mount", "-o", f"remount,size={size}", str(self.path)])

    def free_bytes(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def unmount(self) -> None:
        # Lazy: a process of the test that still holds a file open must not make teardown fail.
        self._run(["umount", "--lazy", str(self.path)], check=False)


def can_sudo() -> bool:
    """Whether this user may run commands as root without a password (GitHub's runner may)."""
    if shutil.which("sudo") is None:
        return False
    return subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode == 0


def require_tool(name: str, install: str) -> str:
    """The path of the program ``name``; without it, skip saying how to install it (fail under CI=true,
    which installs every tool: scripts/install-test-tools.sh)."""
    found = shutil.which(name)
    if found is not None:
        return found
    reason = f"{name} is not installed ({install})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def require_root_for_tmpfs() -> None:
    """Skip, saying why, unless tmpfs can be mounted (root, or passwordless sudo); fail under CI=true."""
    if os.geteuid() == 0 or can_sudo():
        return
    reason = "mounting a small tmpfs needs root or passwordless sudo"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def raise_open_files_limit(needed: int) -> Iterator[None]:
    """Raise this process's soft open-files limit to its hard limit for a test (children inherit it).

    A login shell's default is 1,024 (GitHub's runner, ``su - user``); a flood of thousands of
    sockets needs more. Raising the soft limit up to the hard one needs no privilege.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.fail(f"the hard open-files limit is {hard}; this test needs {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


LITESTREAM = Path(sys.executable).parent / "litestream"


class Litestream:
    """``litestream replicate`` on the database, with its control socket, until the test ends."""

    def __init__(self, tmp_path: Path, database: Path) -> None:
        self.database = database
        self.replica = tmp_path / "replica"
        self.socket = tmp_path / "ls.sock"
        self.env = {
            **os.environ,
            "DATABASE_PATH": str(database),
            "REPLICA_URL": f"file://{self.replica}",
            "LITESTREAM_METRICS_ADDR": "",
            "LITESTREAM_SOCKET": str(self.socket),
            "LOG_LEVEL": "WARNING",
        }
        self.process = subprocess.Popen(
            [str(LITESTREAM), "replicate", "-config", str(ROOT / "litestream.yml")],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_for_first_sync(self) -> None:
        deadline = time.monotonic() + 30
        while b"last_sync_at" not in self._list():
            assert self.process.poll() is None, "Litestream exited at start"
            assert time.monotonic() < deadline, "Litestream did not sync within 30 s"
            time.sleep(0.1)

    def _list(self) -> bytes:
        answer = subprocess.run(
            [str(LITESTREAM), "list", "-json", "-socket", str(self.socket), "-timeout", "2"],
            capture_output=True,
            check=False,
        )
        return answer.stdout

    def restored_users(self, target: Path) -> set[str]:
        """The users in a restore of the replica alone, made now."""
        subprocess.run(
            [str(LITESTREAM), "restore", "-o", str(target), f"file://{self.replica}"],
            env=self.env,
            capture_output=True,
            check=True,
        )
        with contextlib.closing(sqlite3.connect(target)) as conn:
            return {row[0] for row in conn.execute("SELECT username FROM users")}

    def signal(self, sig: int) -> None:
        os.killpg(self.process.pid, sig)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
        self.process.wait(timeout=10)
