"""Helpers for tests that run real processes: free loopback ports, waiting for HTTP."""

import os
import resource
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return None


def wait_for_status(url: str, expected: int = 200, timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers ``expected``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: int | None = None
    while time.monotonic() < deadline:
        last = http_status(url)
        if last == expected:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {expected} within {timeout} s (last: {last})")


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
