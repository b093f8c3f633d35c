"""Restoring the replica's latest into a missing database, bounded in time, leaving nothing partial."""

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping

from service.settings import StackSettings
from service.stack.lineage import Standing, state_dir
from service.stack.processes import describe_exit, relay_lines, spawn

log = logging.getLogger("service.stack.supervisor")


class BootError(RuntimeError):
    """Start-up cannot go on; the message says what failed and what was left as it was."""


def restore_latest(settings: StackSettings, environ: Mapping[str, str], source_url: str) -> Standing:
    """Restore the replica's latest into the missing database; RESTORED, or NEW with no backup yet."""
    database = settings.database
    # Leftovers of another database must not be applied to the restored one. The volume lock
    # guarantees that no other restore is writing them.
    for leftover in ("-wal", "-shm", ".tmp"):
        with contextlib.suppress(FileNotFoundError):
            database.with_name(database.name + leftover).unlink()
    shutil.rmtree(state_dir(database), ignore_errors=True)
    log.info(f"no usable database at {database}: restoring from {source_url}")
    began = time.monotonic()
    restore = spawn(
        [
            "litestream", "restore", "-config", str(settings.litestream_config),
            "-if-replica-exists", "-integrity-check", "quick", str(database),
        ],
        {**environ, "REPLICA_URL": source_url},
        capture=True,
    )  # fmt: skip
    try:
        output, _ = restore.communicate(timeout=settings.restore_timeout)
    except subprocess.TimeoutExpired:
        _kill(settings, restore)
        raise BootError(
            f"restore from REPLICA_URL ({source_url}) did not finish within "
            f"{settings.restore_timeout:g} s (RESTORE_TIMEOUT): the replica may be unreachable. "
            "Not starting with an empty database."
        ) from None
    except BaseException:
        _kill(settings, restore)
        raise
    text = output.decode(errors="replace").strip()
    relay_lines(text, failed=restore.returncode != 0)
    if restore.returncode != 0:
        _remove_partial(settings)
        last = text.splitlines()[-1] if text else "no output"
        raise BootError(
            f"restore from REPLICA_URL ({source_url}) failed "
            f"({describe_exit(restore.returncode)}): {last}. Not starting with an empty database "
            "over a replica that may hold the data."
        )
    if not database.exists():
        log.info("no backup in the replica yet: starting a new database")
        return Standing.NEW
    log.info(f"restored {database} in {round((time.monotonic() - began) * 1000)} ms")
    return Standing.RESTORED


def _kill(settings: StackSettings, restore: "subprocess.Popen[bytes]") -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(restore.pid, signal.SIGKILL)
    restore.wait()
    _remove_partial(settings)


def _remove_partial(settings: StackSettings) -> None:
    database = settings.database
    for suffix in ("", ".tmp", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            database.with_name(database.name + suffix).unlink()
