"""Typed keys for what hangs off the application: nothing in the service is global."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from aiohttp import web

from service.http.diskfull import DiskFullWatch
from service.http.litestream_metrics import LitestreamMetrics
from service.http.metrics import Metrics
from service.http.replication import ReplicationAcks
from service.http.write_gate import WriteGate
from service.settings import Config
from service.store import Store


@dataclass
class State:
    """What changes while the process runs."""

    # Readiness says "going away" (503) from SIGTERM on.
    draining: bool = False
    # Set once the server has stopped reading from its connections: a body not yet received by
    # then never will be.
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    metrics_port: int | None = None


CONFIG = web.AppKey("config", Config)
STORE: web.AppKey[Store] = web.AppKey("store")
METRICS = web.AppKey("metrics", Metrics)
STATE = web.AppKey("state", State)
WRITE_GATE = web.AppKey("write_gate", WriteGate)
DISK = web.AppKey("disk", DiskFullWatch)
# None when no Litestream runs beside the service (LITESTREAM_METRICS_ADDR unset).
LITESTREAM: web.AppKey[LitestreamMetrics | None] = web.AppKey("litestream")
# None unless DURABILITY=replicated.
REPLICATION: web.AppKey[ReplicationAcks | None] = web.AppKey("replication")
Clock = Callable[[], date]
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
