"""The supervisor once gunicorn runs: watch both children and the lease, stop in order.

- A stop (SIGTERM or SIGINT): gunicorn drains and exits, then Litestream makes its final sync, then the
  lease is released.
- Litestream dies: gunicorn's worker stops taking writes at once (it watches Litestream's process,
  ``service/http/write_gate.py``); gunicorn gets a short drain for the reads in flight, and the
  supervisor exits non-zero, so that the platform restarts the stack. A restart on the same volume
  replicates what was committed meanwhile.
- gunicorn exits: Litestream syncs and stops; exit non-zero.
- The object store says that another writer took the lease: the fence (``Litestream.fence``). Writes
  and readiness answer 503 until the stack is stopped.
- The lease's deadline passes (no renewal got through in time: the store, or the path to it, is
  down; ``service/lease_deadline.py``): the worker refuses writes by itself, and Litestream is paused
  (SIGSTOP), so that neither acknowledges nor uploads anything once another machine could take the
  lease. The keeper goes on trying; the first renewal that gets through resumes Litestream (SIGCONT)
  and writes. A stop meanwhile kills Litestream without a final sync and leaves the lease to lapse.
"""

import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.stack.boot import Boot
from service.stack.lease import LeaseKeeper, WriterLease, release_quietly
from service.stack.litestream import Litestream
from service.stack.processes import describe_exit, stop_process

log = logging.getLogger("service.stack.supervisor")

_POLL_SECONDS = 0.1
# After Litestream died every write is refused, so gunicorn gets only this long to finish the reads in
# flight before it is killed: the platform's restart is what brings writes back.
_DRAIN_WITHOUT_LITESTREAM_SECONDS = 3.0


@dataclass
class Serving:
    """The run loop over a finished boot; ``stop_requested`` says whether a stop signal arrived."""

    litestream: Litestream
    gunicorn: "subprocess.Popen[bytes]"
    lease: WriterLease
    keeper: LeaseKeeper
    shutdown_timeout: float
    lease_ttl: float
    fence_file: Path

    @classmethod
    def after(cls, boot: Boot, shutdown_timeout: float) -> "Serving":
        assert boot.litestream and boot.gunicorn and boot.lease and boot.keeper, "the boot finished"
        return cls(
            boot.litestream,
            boot.gunicorn,
            boot.lease,
            boot.keeper,
            shutdown_timeout,
            boot.settings.lease_ttl,
            boot.files.fence,
        )

    def run(self, stop_requested: Callable[[], bool]) -> int:
        fenced = paused = False
        try:
            while True:
                if stop_requested():
                    return self.stop(unsure=fenced or paused)
                if self.gunicorn.poll() is not None:
                    return self._after_gunicorn_exit(unsure=fenced or paused)
                if self.keeper.lost is not None and not fenced:
                    fenced = True
                    self.litestream.fence(self.fence_file, self.keeper.lost)
                    log.error(
                        f"{self.keeper.lost}: this stack stopped replicating and refuses writes (503) until "
                        "it is stopped. Its writes since the other writer took over stay on this volume; the "
                        "next start sets the database aside and re-applies its newer rows"
                    )
                elif not fenced and paused != (self.keeper.deadline.remaining() <= 0):
                    paused = not paused
                    self._pause(paused)
                elif not fenced and self.litestream.exit_code() is not None:
                    return self._after_litestream_exit()
                time.sleep(_POLL_SECONDS)
        finally:
            self.keeper.stop()

    def _pause(self, pause: bool) -> None:
        # The worker refuses writes by itself from the same deadline.
        self.litestream.pause(pause)
        if pause:
            log.error(
                "the writer lease was not renewed before its deadline: writes are refused (503) and "
                "Litestream is paused until a renewal gets through",
                extra={"lease_ttl": self.lease_ttl},
            )
        else:
            log.warning("the writer lease is renewed again: Litestream resumes and writes are taken")

    def _after_gunicorn_exit(self, unsure: bool) -> int:
        log.error(
            f"gunicorn exited ({describe_exit(self.gunicorn.returncode)}); stopping Litestream after its "
            "final sync"
        )
        self.litestream.stop(final_sync=not unsure)
        if not unsure:
            self._release()
        return 1

    def _after_litestream_exit(self) -> int:
        log.error(
            f"Litestream exited ({self.litestream.describe_exit()}): writes are refused from now on; "
            "stopping gunicorn and exiting so that the platform restarts the stack"
        )
        # No write can succeed any more: a short drain for the reads in flight, no more.
        stop_process(self.gunicorn, signal.SIGTERM, _DRAIN_WITHOUT_LITESTREAM_SECONDS)
        self._release()
        return 1

    def _release(self) -> str | None:
        """Stop renewing first: a renewal in flight with the same ETag would win over the release and
        leave the lease held until it lapses."""
        self.keeper.stop()
        return release_quietly(self.lease)

    def stop(self, unsure: bool) -> int:
        """``unsure``: fenced or paused when the stop came; Litestream then makes no final sync."""
        log.info("stopping: gunicorn finishes the requests in flight, then Litestream makes its final sync")
        began = time.monotonic()
        served = stop_process(self.gunicorn, signal.SIGTERM, self.shutdown_timeout + 10)
        if unsure or self.keeper.lost is not None or self.keeper.deadline.remaining() <= 0:
            # Fenced, or past the lease's deadline: no final sync may upload over another writer's
            # history. What was committed since stays on this volume for the next start to place.
            self.litestream.stop(final_sync=False)
            log.warning("stopped without Litestream's final sync: this stack may no longer hold the lease")
            return 1
        synced = self.litestream.stop(final_sync=True)
        problem = self._release()
        if problem:
            log.warning("could not release the writer lease; it lapses by itself", extra={"reason": problem})
        log.info(
            "stopped",
            extra={"seconds": round(time.monotonic() - began, 3), "gunicorn": served, "litestream": synced},
        )
        return 0 if served == 0 and synced == 0 else 1
