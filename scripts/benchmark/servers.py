"""The processes under test: started pinned to the server's core, found (the gunicorn worker), measured
(CPU time, resident set) and stopped."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
SERVER_CPU = 0


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            found.extend(int(child) for child in text.split())
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def gunicorn_worker(root_pid: int) -> int | None:
    """The gunicorn worker below ``root_pid``: a gunicorn process whose parent is gunicorn too."""
    stack = [(root_pid, False)]
    while stack:
        pid, parent_is_gunicorn = stack.pop()
        is_gunicorn = "gunicorn" in _cmdline(pid)
        if is_gunicorn and parent_is_gunicorn:
            return pid
        stack.extend((child, is_gunicorn) for child in children(pid))
    return None


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for process {pid}")


def peak_rss_mb(pid: int) -> float:
    """VmHWM, the resident set's high-water mark, in MB."""
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float:
    """VmRSS, the resident set now, in MB."""
    return _status_mb(pid, "VmRSS")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    ready_seconds: float
    worker: int

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.worker)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running(
    name: str,
    command: Sequence[str],
    env: Mapping[str, str],
    port: int,
    log: Path,
    timeout: float = 60.0,
    cwd: Path = ROOT,
) -> Iterator[Server]:
    """Start ``command`` in ``cwd`` pinned to the server core; yield once ``/readyz`` answers 200; stop it."""
    with log.open("ab") as log_file:
        started = time.perf_counter()
        process = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CPU), *command],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    try:
        deadline = started + timeout
        while http_status(port, "/readyz") != 200:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see {log}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{name} not ready within {timeout} s; see {log}")
            time.sleep(0.005)
        ready_seconds = time.perf_counter() - started
        worker = gunicorn_worker(process.pid)
        if worker is None:
            raise RuntimeError(f"{name}: no gunicorn worker found below process {process.pid}")
        yield Server(name, process, port, ready_seconds, worker)
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM to the process started here, then its own process group if it does not go."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # Whatever it left in its group (it was started in a new session), by that group's id.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def stack_available() -> bool:
    """Whether the production stack's files are here: ``scripts/start.sh`` and ``litestream.yml``."""
    return (ROOT / "scripts" / "start.sh").is_file() and (ROOT / "litestream.yml").is_file()
