"""The supervisor's children: started in a process group of their own, tied to its life, stopped in
bounds; and what they print, relayed as JSON lines."""

import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from service.stack.parent_death import die_with_parent

log = logging.getLogger("service.stack.supervisor")


def spawn(
    argv: list[str],
    env: Mapping[str, str],
    *,
    capture: bool = False,
    cwd: Path | None = None,
) -> "subprocess.Popen[bytes]":
    """A child in a process group of its own that dies with this process.

    Own group: a terminal's Ctrl-C reaches this process only, which passes on one signal. The lease
    keeper's thread runs meanwhile, so ``preexec_fn`` does no more than one ``prctl`` call through a
    library loaded before the fork (``service/stack/parent_death.py``): nothing that takes a lock.
    """
    return subprocess.Popen(
        argv,
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        start_new_session=True,
        preexec_fn=functools.partial(die_with_parent, os.getpid()),
    )


def stop_process(process: "subprocess.Popen[bytes]", sig: int, timeout: float) -> int:
    """Send ``sig`` to the process, wait up to ``timeout``, then SIGKILL its group; its exit code."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.error("did not stop in time; killing it", extra={"pid": process.pid, "seconds": timeout})
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


_litestream_log = logging.getLogger("litestream")


def relay_lines(text: str, failed: bool) -> None:
    """A child's captured output, one JSON line each: Litestream's own JSON lines as they are, and its
    plain-text ones (``Error: ...`` from its command line) as a record of ours."""
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("{"):
            try:
                json.loads(line)
            except ValueError:
                pass
            else:
                sys.stderr.write(line + "\n")
                continue
        _litestream_log.log(logging.ERROR if failed else logging.INFO, line)


def describe_exit(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
