"""Typed keys for what hangs off the application: nothing in the service is global."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from aiohttp import web

from service.db import UserStore
from service.metrics import Metrics
from service.settings import Config


@dataclass
class State:
    """What changes while the process runs."""

    draining: bool = False
    metrics_port: int | None = None


CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", UserStore)
METRICS = web.AppKey("metrics", Metrics)
STATE = web.AppKey("state", State)
Clock = Callable[[], date]
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
REQUEST_ID = web.RequestKey("request_id", str)
