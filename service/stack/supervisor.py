"""The production stack's supervisor: ``python -m service supervise`` (scripts/start.sh execs it).

It boots (``service/stack/boot.py``: a list of steps, each bounded in time), then serves
(``service/stack/serving.py``): Litestream and gunicorn side by side as its children, each in a
process group of its own (a Ctrl-C in a terminal reaches only this process) and each killed by the
kernel if this process dies (``PR_SET_PDEATHSIG``), so that no orphan keeps the port or the database.

Signals: SIGTERM or SIGINT while booting stops before serving; while serving, it stops in order
(gunicorn drains, Litestream makes its final sync, the lease is released), and further stop signals
are logged and ignored: they cannot cut the final sync short. SIGHUP is passed to gunicorn (a reload).
"""

import logging
import os
import signal
from pathlib import Path
from types import FrameType

from service.logs import configure_logging
from service.settings import Config, ConfigError, StackSettings, environment
from service.stack.boot import STEPS, Boot
from service.stack.lease import LeaseHeld
from service.stack.replica import ReplicaUnavailable
from service.stack.restore import BootError
from service.stack.serving import Serving
from service.store.migrations import SchemaTooNew
from service.store.sqlite import DatabaseError

log = logging.getLogger("service.stack.supervisor")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# What stops the boot with one message and nothing left running: each names what failed.
_BOOT_FAILURES = (BootError, LeaseHeld, ReplicaUnavailable, ConfigError, SchemaTooNew, DatabaseError, OSError)


class StopRequested(BaseException):
    """A stop signal arrived while booting (BaseException, so that no ``except Exception`` eats it)."""


class StopSignals:
    """SIGTERM and SIGINT: while booting they interrupt the step under way; while serving they are
    counted, and the run loop stops at the first."""

    def __init__(self) -> None:
        self.count = 0

    def while_booting(self) -> None:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._interrupt)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def while_serving(self, pass_hangup_to: int) -> None:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._count)
        signal.signal(signal.SIGHUP, lambda signum, frame: os.kill(pass_hangup_to, signal.SIGHUP))

    def requested(self) -> bool:
        return self.count > 0

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        raise StopRequested(signal.Signals(signum).name)

    def _count(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count > 1:
            log.warning(
                "already stopping; this signal is ignored so that the final sync can finish",
                extra={"signal": signal.Signals(signum).name},
            )


def run(config: Config, settings: StackSettings, environ: dict[str, str]) -> int:
    """Boot step by step, then serve until stopped; the exit code."""
    signals = StopSignals()
    signals.while_booting()
    boot = Boot.begin(settings, environ, os.getpid())
    try:
        try:
            for step in STEPS:
                step(boot)
        except StopRequested as stop:
            log.warning(f"{stop} during start-up: stopping before serving")
            boot.abandon()
            return 1
        except _BOOT_FAILURES as exc:
            log.error(f"not starting: {exc}")
            boot.abandon()
            return 1
        serving = Serving.after(boot, config.shutdown_timeout)
        signals.while_serving(serving.gunicorn.pid)
        return serving.run(signals.requested)
    finally:
        boot.close()


def main(root: Path) -> int:
    """Read every setting once (``service/settings.py``), then run; a bad setting is one JSON line."""
    configure_logging(logging.INFO)
    try:
        config = Config.from_env()
        settings = StackSettings.from_env(environment(), root)
    except ConfigError as exc:
        log.error(f"not starting: {exc}")
        return 1
    configure_logging(config.logging_level)
    # A handful of lines per start and stop, each one an operator wants to see whatever LOG_LEVEL says.
    log.setLevel(min(config.logging_level, logging.INFO))
    if settings.dropped_ca_bundle:
        log.warning(
            "ignoring AWS_CA_BUNDLE: Litestream cannot use it (put a private CA in the system trust store)"
        )
    return run(config, settings, settings.child_environment(environment()))
