"""Helpers for tests that run real processes: free loopback ports, waiting for HTTP."""

import socket
import time
import urllib.error
import urllib.request


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
