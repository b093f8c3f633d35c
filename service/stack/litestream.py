"""Litestream's ``replicate`` process as the supervisor runs it: started, waited for, paused, fenced,
stopped. The worker's side (Litestream's metrics) is ``service/http/litestream_metrics.py``."""

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from service import contract
from service.settings import StackSettings
from service.stack.processes import describe_exit, spawn, stop_process
from service.stack.restore import BootError

log = logging.getLogger("service.stack.supervisor")

# How long Litestream may take to stop after SIGTERM: litestream.yml's shutdown-sync-timeout (10 s)
# and some room to close.
STOP_SECONDS = 20.0
_POLL_SECONDS = 0.1


class Litestream:
    """One ``litestream replicate`` child, replicating ``settings.database`` into ``write_url``."""

    def __init__(self, settings: StackSettings, environ: Mapping[str, str], write_url: str) -> None:
        self.settings = settings
        self.environ = dict(environ)
        log.info("starting Litestream; gunicorn starts after its first sync")
        self.process = spawn(
            ["litestream", "replicate", "-config", str(settings.litestream_config)],
            {**self.environ, "REPLICA_URL": write_url},
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        return self.process.poll()

    def describe_exit(self) -> str:
        return describe_exit(self.process.returncode)

    def wait_for_first_sync(self) -> None:
        """Litestream replicates a database only from its first sync on: no write is taken before."""
        deadline = time.monotonic() + self.settings.ready_timeout
        while not self.synced():
            if self.process.poll() is not None:
                raise BootError(f"Litestream exited ({self.describe_exit()}) before its first sync")
            if time.monotonic() >= deadline:
                raise BootError(
                    f"Litestream did not sync {self.settings.database} to REPLICA_URL within "
                    f"{self.settings.ready_timeout:g} s (LITESTREAM_READY_TIMEOUT): is the replica "
                    "reachable? Not serving writes that would not be replicated."
                )
            time.sleep(_POLL_SECONDS)

    def synced(self) -> bool:
        """Whether Litestream's control socket lists the database with a first sync done."""
        socket = str(self.settings.litestream_socket)
        try:
            answer = subprocess.run(
                ["litestream", "list", "-json", "-socket", socket, "-timeout", "2"],
                env=self.environ,
                capture_output=True,
                timeout=5,
                check=False,
            )
            databases = json.loads(answer.stdout).get("databases") or []
        except (subprocess.TimeoutExpired, ValueError, AttributeError):
            return False
        return any(
            entry.get("path") == str(self.settings.database) and entry.get("last_sync_at")
            for entry in databases
        )

    def pause(self, pause: bool) -> None:
        """SIGSTOP holds every thread of Litestream where it is: no request leaves it until SIGCONT."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGSTOP if pause else signal.SIGCONT)

    def fence(self, fence_file: Path, reason: str) -> None:
        """Another writer holds the lease: the fence protocol (``service/contract.py``).

        The reason first, durable, for the worker to read when it sees Litestream go; then SIGKILL,
        which skips the final sync that would upload this machine's writes over the other writer's
        history.
        """
        contract.write_fence(fence_file, reason)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, final_sync: bool) -> int:
        """SIGTERM (Litestream's final sync) or SIGKILL (none); its exit code."""
        return stop_process(self.process, signal.SIGTERM if final_sync else signal.SIGKILL, STOP_SECONDS)
