"""The application factory: all wiring happens here, and everything hangs off the app."""

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import date, datetime, tzinfo

from aiohttp import web

from service import __version__
from service.http import keys, views
from service.http.diskfull import DiskFullWatch
from service.http.litestream_metrics import LitestreamMetrics
from service.http.metrics import Metrics
from service.http.middlewares import observe
from service.http.replication import ReplicationAcks
from service.http.write_gate import WriteGate
from service.logs import configure_logging
from service.settings import Config, ConfigError
from service.store import open_store
from service.trace import TIMELINE, watch_loop_lag

log = logging.getLogger(__name__)


def create_app(config: Config, clock: Callable[[], date] | None = None) -> web.Application:
    """The public application; its start-up opens the store and the metrics port."""
    metrics = Metrics(durability=config.durability)
    metrics.record_boot(config.boot_report)
    app = web.Application(middlewares=[observe(metrics)], client_max_size=views.MAX_BODY_BYTES)
    app[keys.CONFIG] = config
    app[keys.CLOCK] = clock or _Today(config.zone)
    app[keys.METRICS] = metrics
    app[keys.STATE] = keys.State()
    litestream = config.litestream_metrics_addr
    app[keys.LITESTREAM] = LitestreamMetrics(litestream, metrics) if litestream else None
    app[keys.DISK] = DiskFullWatch(
        config.database_path, config.disk_full_resume_mb * 1024 * 1024, metrics, app[keys.LITESTREAM]
    )
    if config.trace_file is not None:
        app.cleanup_ctx.append(_trace)
    app.cleanup_ctx.append(_write_gate)
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(_replication)
    app.cleanup_ctx.append(_metrics_server)
    app.on_startup.append(_freeze_start_up_objects)
    app.on_shutdown.append(_drain)
    app.on_cleanup.append(_close_disk_guard)

    # Any text at all, newlines and encoded slashes included (".*" stops at a newline), so that
    # every malformed name reaches the handler's check and gets a 400, never the router's 404.
    app.router.add_put(r"/hello/{username:[\s\S]*}", views.put_hello)
    app.router.add_get(r"/hello/{username:[\s\S]*}", views.get_hello)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/openapi.json", views.openapi)
    return app


class _Today:
    """Today's date in the service's time zone, asked on every GET and PUT.

    A date changes only on a whole second, so it is worked out once a second: ``datetime.now(zone)``
    converts to the zone on every call.
    """

    def __init__(self, zone: tzinfo) -> None:
        self._zone = zone
        self._second = -1
        self._today = date.min

    def __call__(self) -> date:
        second = int(time.time())
        if second != self._second:
            self._today = datetime.fromtimestamp(second, self._zone).date()
            self._second = second
        return self._today


async def app_factory() -> web.Application:
    """For gunicorn (``service.http.app:app_factory``): settings from the environment."""
    config = Config.from_env()
    configure_logging(config.logging_level)
    return create_app(config)


async def _write_gate(app: web.Application) -> AsyncIterator[None]:
    """Watch Litestream (when the supervisor started it), so that writes stop the moment it exits."""
    config = app[keys.CONFIG]
    gate = WriteGate(config.litestream_pid, config.fence_file, config.lease_deadline_file)
    gate.open()
    app[keys.WRITE_GATE] = gate
    loop = asyncio.get_running_loop()
    pidfd = gate.pidfd
    if pidfd is not None:

        def on_litestream_exit() -> None:
            gate.refusal()
            loop.remove_reader(pidfd)  # it stays readable: one call is all it takes

        loop.add_reader(pidfd, on_litestream_exit)
    try:
        yield
    finally:
        if pidfd is not None:
            loop.remove_reader(pidfd)
        gate.close()


async def _store(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    store = await open_store(config, observe=app[keys.METRICS].observe_db)
    app[keys.STORE] = store
    about = store.describe()
    log.info("started", extra={"version": __version__, **about, "timezone": config.timezone})
    yield
    await store.close()
    log.info("database closed", extra={"database": about["database"]})


async def _replication(app: web.Application) -> AsyncIterator[None]:
    """DURABILITY=replicated: PUTs wait for the replica (service/http/replication.py)."""
    config = app[keys.CONFIG]
    if config.durability != "replicated":
        app[keys.REPLICATION] = None
        yield
        return
    if config.litestream_socket is None or config.litestream_pid is None:
        raise ConfigError(
            "DURABILITY=replicated needs Litestream beside the service: run the stack "
            "(python -m service supervise, or make run), not the development server alone"
        )
    acks = ReplicationAcks(
        config.litestream_socket,
        config.database_path.resolve(),
        config.replication_ack_timeout,
        app[keys.METRICS],
    )
    await acks.open()
    app[keys.REPLICATION] = acks
    log.info(
        "DURABILITY=replicated: a PUT's 204 waits for the replica",
        extra={"timeout": config.replication_ack_timeout},
    )
    try:
        yield
    finally:
        await acks.close()


async def _metrics_server(app: web.Application) -> AsyncIterator[None]:
    """Prometheus on its own port, so that the public port never exposes it."""
    config = app[keys.CONFIG]
    metrics_app = web.Application()
    metrics_app[keys.STORE] = app[keys.STORE]
    metrics_app[keys.METRICS] = app[keys.METRICS]
    metrics_app[keys.LITESTREAM] = app[keys.LITESTREAM]
    metrics_app[keys.CONFIG] = config
    metrics_app[keys.WRITE_GATE] = app[keys.WRITE_GATE]
    metrics_app.router.add_get("/metrics", views.metrics)
    runner = web.AppRunner(metrics_app, access_log=None)
    await runner.setup()
    # SO_REUSEPORT: on SIGHUP gunicorn starts the new worker while the old one still holds this
    # port; both bind it until the old one exits, so a reload does not fail the new worker's boot.
    site = web.TCPSite(runner, config.metrics_host, config.metrics_port, reuse_port=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    # The port bound, which differs from the setting when that is 0 (tests).
    addresses = runner.addresses
    app[keys.STATE].metrics_port = addresses[0][1] if addresses else config.metrics_port
    yield
    await runner.cleanup()


async def _freeze_start_up_objects(app: web.Application) -> None:
    """Objects made during start-up (modules, the app, the store) live as long as the worker: moved
    out of the collector's sight, a full collection no longer walks them. Under sustained PUTs the
    full collections took up to 20 ms before (``python scripts/bench.py --timeline``)."""
    gc.collect()
    gc.freeze()


async def _trace(app: web.Application) -> AsyncIterator[None]:
    """TRACE_FILE: record the timeline from start-up on, and write it out once everything is closed."""
    path = app[keys.CONFIG].trace_file
    assert path is not None
    TIMELINE.start()
    watcher = asyncio.create_task(watch_loop_lag(TIMELINE))
    yield
    watcher.cancel()
    TIMELINE.stop()
    await asyncio.to_thread(TIMELINE.dump, path)
    log.info("timeline written", extra={"trace_file": str(path), "events": len(TIMELINE.events())})


async def _close_disk_guard(app: web.Application) -> None:
    # on_cleanup runs after every cleanup_ctx: the store is closed, nothing writes any more.
    await app[keys.DISK].close()
    if (litestream := app[keys.LITESTREAM]) is not None:
        await litestream.close()


async def _drain(app: web.Application) -> None:
    # Runs once the listening sockets are closed; requests already in flight go on to finish.
    app[keys.STATE].draining = True
    app[keys.STATE].closing.set()
    log.info("draining: finishing requests in flight")
