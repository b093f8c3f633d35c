"""The benchmark's yardstick: a bare aiohttp app with the service's routes and constant answers.

It does no validation, no database, no logging and no metrics, so under the same gunicorn worker it
shows the most this machine can serve through aiohttp; the service is measured as a share of it.
Served with ``gunicorn -c gunicorn.conf.py scripts.bench_reference:app_factory``.
"""

from aiohttp import web

from service.http import keys
from service.http.metrics import Metrics
from service.settings import Config

GREETING = b'{"message": "Hello, someone! Your birthday is in 42 day(s)"}'
READY = b'{"status": "ready"}'


async def get_hello(request: web.Request) -> web.Response:
    return web.Response(body=GREETING, content_type="application/json")


async def put_hello(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=204)


async def readyz(request: web.Request) -> web.Response:
    return web.Response(body=READY, content_type="application/json")


def create_reference_app() -> web.Application:
    app = web.Application(client_max_size=1024)
    app.router.add_get("/hello/{username}", get_hello)
    app.router.add_put("/hello/{username}", put_hello)
    app.router.add_get("/readyz", readyz)
    return app


async def app_factory() -> web.Application:
    """For gunicorn, like ``service.http.app:app_factory``: gunicorn.conf.py's runner reads the settings
    (its connection cap and head timeout, which the service is measured with too), the state and the
    metrics its connection limits count refusals in; no request is measured or logged."""
    app = create_reference_app()
    app[keys.CONFIG] = Config.from_env()
    app[keys.STATE] = keys.State()
    app[keys.METRICS] = Metrics()
    return app
