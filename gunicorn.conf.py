"""Production server: ``gunicorn -c gunicorn.conf.py`` alone starts the service.

One worker process: SQLite has one writer, and a single asyncio worker serves all connections.
"""

import os

from service.settings import Config

_config = Config.from_env()

wsgi_app = "service.app:app_factory"
worker_class = "aiohttp.GunicornWebWorker"
workers = 1
bind = [f"[{_config.host}]:{_config.port}" if ":" in _config.host else f"{_config.host}:{_config.port}"]

# On SIGTERM the worker stops accepting, lets requests in flight finish for up to this long, then
# closes the database. Fly's kill_timeout must exceed this plus Litestream's shutdown sync.
graceful_timeout = int(_config.shutdown_timeout)
# A worker that does not check in for this long is killed and replaced.
timeout = 30
keepalive = 75

# The service writes its own JSON access line per request; gunicorn's own messages go to stderr.
accesslog = None
errorlog = "-"
loglevel = _config.log_level.lower()

proc_name = "hello-birthday"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
# gunicorn's run-time control socket is not used, and would need a writable home directory.
control_socket_disable = True
