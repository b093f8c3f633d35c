"""Configuration from environment variables, checked once at start-up."""

import ipaddress
import logging
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from service import contract

DURABILITY_MODES = ("local", "replicated")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


# The environment variables each process reads (their meaning: the README's Settings table). The
# command line lists them in each command's --help.
DATABASE_SETTINGS = (
    "DATABASE_PATH",
    "DATABASE_URL",
    "DATABASE_POOL_SIZE",
    "DATABASE_STATEMENT_TIMEOUT",
    "DATABASE_CONNECT_TIMEOUT",
    "LOG_LEVEL",
)
SERVICE_SETTINGS = (
    "HOST",
    "PORT",
    *DATABASE_SETTINGS,
    "METRICS_HOST",
    "METRICS_PORT",
    "TIMEZONE",
    "SHUTDOWN_TIMEOUT",
    "HEADER_TIMEOUT",
    "BODY_TIMEOUT",
    "MAX_CONNECTIONS",
    "LITESTREAM_METRICS_ADDR",
    "DISK_FULL_RESUME_MB",
    "TRACE_FILE",
    "FORWARDED_ALLOW_IPS",
    "DURABILITY",
    "REPLICATION_ACK_TIMEOUT",
    "LITESTREAM_SOCKET",
)
STACK_SETTINGS = (
    "REPLICA_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "RESTORE_TIMEOUT",
    "LITESTREAM_READY_TIMEOUT",
    "WRITER_LEASE_TTL",
    "FLY_MACHINE_ID",
    "POD_UID",
    *SERVICE_SETTINGS,
)


class ConfigError(ValueError):
    """A setting with a value the service cannot run with; the message names the variable."""


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """The PostgreSQL profile's settings (``DATABASE_URL`` and its companions)."""

    url: str
    pool_size: int = 10
    # Every statement, and every wait for a connection, ends within these; a request that needs the
    # database answers 503 rather than waiting for the client's own timeout.
    statement_timeout: float = 2.0
    connect_timeout: float = 2.0

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    database_path: Path = Path("data/hello.db")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9091
    log_level: str = "INFO"
    timezone: str = "UTC"
    shutdown_timeout: float = 20.0
    # Set by the supervisor for gunicorn (service/stack/supervisor.py), never by hand: Litestream's process
    # id (writes are refused once it exits), the fence file, the writer lease's shared deadline
    # (service/lease_deadline.py), what it merged from machines that may not write
    # (service/stack/stranded.py), and what the boot did (JSON).
    litestream_pid: int | None = None
    fence_file: Path | None = None
    lease_deadline_file: Path | None = None
    set_aside_merged_file: Path | None = None
    boot_report: str = ""
    # Slow or abusive clients: a request head must arrive within header_timeout of the connection
    # opening (or of its first byte after an idle keep-alive pause), a body within body_timeout of
    # its head; at most max_connections are open at once (and never more than the open-files
    # limit allows).
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    max_connections: int = 1000
    # Where Litestream serves its metrics (host:port, loopback only); empty when no Litestream runs
    # beside the service (tests, `python -m service serve`).
    litestream_metrics_addr: str = ""
    # After a full disk, writes resume only once this much is free again (MiB).
    disk_full_resume_mb: int = 64
    # The PostgreSQL profile: set DATABASE_URL=postgresql://... and the store is PostgreSQL instead of
    # the SQLite file at database_path (which is then unused). TLS through the URL's sslmode.
    database_url: str = ""
    database_pool_size: int = 10
    database_statement_timeout: float = 2.0
    database_connect_timeout: float = 2.0
    # Diagnostics: with a path set, the worker records a timeline of its write path, garbage
    # collections and event-loop stalls, and writes it there when it stops (service/trace.py).
    trace_file: Path | None = None
    # Which proxies' X-Forwarded-* headers gunicorn trusts (its ``forwarded_allow_ips``).
    forwarded_allow_ips: str = "127.0.0.1,::1"
    # What a PUT's 204 means: "local", committed on this machine's volume; "replicated", also held by
    # the replica (service/http/replication.py), confirmed within replication_ack_timeout.
    durability: str = "local"
    replication_ack_timeout: float = 2.0
    # Litestream's control socket (the supervisor sets it for the worker).
    litestream_socket: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Config":
        env = os.environ if environ is None else environ
        defaults = cls()
        config = cls(
            host=_text(env, "HOST", defaults.host),
            port=_port(env, "PORT", defaults.port),
            database_path=Path(_text(env, "DATABASE_PATH", str(defaults.database_path))),
            metrics_host=_text(env, "METRICS_HOST", defaults.metrics_host),
            metrics_port=_port(env, "METRICS_PORT", defaults.metrics_port),
            log_level=_log_level(env, "LOG_LEVEL", defaults.log_level),
            timezone=_timezone(env, "TIMEZONE", defaults.timezone),
            shutdown_timeout=_seconds(env, "SHUTDOWN_TIMEOUT", defaults.shutdown_timeout),
            litestream_pid=_pid(env, contract.LITESTREAM_PID),
            fence_file=Path(fence) if (fence := _text(env, contract.WRITER_FENCE_FILE, "")) else None,
            lease_deadline_file=(
                Path(deadline) if (deadline := _text(env, contract.WRITER_LEASE_DEADLINE_FILE, "")) else None
            ),
            set_aside_merged_file=(
                Path(merged) if (merged := _text(env, contract.SET_ASIDE_MERGED_FILE, "")) else None
            ),
            boot_report=_text(env, contract.BOOT_REPORT, ""),
            header_timeout=_seconds(env, "HEADER_TIMEOUT", defaults.header_timeout),
            body_timeout=_seconds(env, "BODY_TIMEOUT", defaults.body_timeout),
            max_connections=_count(env, "MAX_CONNECTIONS", defaults.max_connections, 1, 1_000_000),
            litestream_metrics_addr=_loopback_address(
                env, "LITESTREAM_METRICS_ADDR", defaults.litestream_metrics_addr
            ),
            disk_full_resume_mb=_count(
                env, "DISK_FULL_RESUME_MB", defaults.disk_full_resume_mb, 1, 1_048_576
            ),
            database_url=_database_url(env, "DATABASE_URL"),
            database_pool_size=_count(env, "DATABASE_POOL_SIZE", defaults.database_pool_size, 1, 1000),
            database_statement_timeout=seconds_setting(
                env, "DATABASE_STATEMENT_TIMEOUT", defaults.database_statement_timeout, 0.05, 600
            ),
            database_connect_timeout=seconds_setting(
                env, "DATABASE_CONNECT_TIMEOUT", defaults.database_connect_timeout, 0.05, 600
            ),
            trace_file=Path(trace) if (trace := _text(env, "TRACE_FILE", "")) else None,
            forwarded_allow_ips=_text(env, "FORWARDED_ALLOW_IPS", defaults.forwarded_allow_ips),
            durability=_choice(env, "DURABILITY", defaults.durability, DURABILITY_MODES),
            replication_ack_timeout=seconds_setting(
                env, "REPLICATION_ACK_TIMEOUT", defaults.replication_ack_timeout, 0.1, 60
            ),
            litestream_socket=Path(socket) if (socket := _text(env, "LITESTREAM_SOCKET", "")) else None,
        )
        if config.port == config.metrics_port and config.port != 0:
            raise ConfigError(f"METRICS_PORT must differ from PORT (both are {config.port})")
        if config.durability == "replicated" and config.database_url:
            raise ConfigError(
                "DURABILITY=replicated is for the SQLite profile (Litestream); with DATABASE_URL the "
                "PostgreSQL server's own replication decides what a commit survives"
            )
        return config

    @property
    def postgres(self) -> PostgresSettings:
        if not self.database_url:
            raise ConfigError("DATABASE_URL is not set: the store is the SQLite file at DATABASE_PATH")
        return PostgresSettings(
            url=self.database_url,
            pool_size=self.database_pool_size,
            statement_timeout=self.database_statement_timeout,
            connect_timeout=self.database_connect_timeout,
        )

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def logging_level(self) -> int:
        return logging.getLevelNamesMapping()[self.log_level]


_S3_URL = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^?]*)?(\?.*)?")
_FILE_URL = re.compile(r"file:///[^?]+")
# A unix socket path holds at most 108 bytes on Linux, the terminating NUL included.
_SOCKET_PATH_MAX = 100


@dataclass(frozen=True, slots=True)
class StackSettings:
    """What the supervisor needs beyond the service's own ``Config``; every rule lives here once.

    ``scripts/start.sh`` only checks that the tools are on PATH and execs the supervisor, which reads
    these. ``child_environment`` is what Litestream (``litestream.yml`` expands ``$DATABASE_PATH``,
    ``$REPLICA_URL``, ``$LITESTREAM_SOCKET``, ``$LITESTREAM_METRICS_ADDR``) and gunicorn get.
    """

    database: Path
    replica_url: str
    litestream_config: Path
    gunicorn_config: Path
    litestream_socket: Path
    litestream_metrics_addr: str
    restore_timeout: float
    ready_timeout: float
    lease_ttl: float
    runtime_dir: Path
    # AWS_CA_BUNDLE was set: Litestream 0.5.17's S3 client cannot start with it ("unable to add custom
    # RootCAs HTTPClient"), so the children never get it; the supervisor says so.
    dropped_ca_bundle: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str], root: Path) -> "StackSettings":
        replica_url = environ.get("REPLICA_URL", "").strip()
        if not replica_url:
            raise ConfigError(
                "REPLICA_URL is not set: give s3://bucket/path?endpoint=https://...&region=... or "
                "file:///absolute/path"
            )
        if _S3_URL.fullmatch(replica_url):
            if not (environ.get("AWS_ACCESS_KEY_ID") or environ.get("LITESTREAM_ACCESS_KEY_ID")):
                raise ConfigError("AWS_ACCESS_KEY_ID is not set (needed for the s3:// REPLICA_URL)")
            if not (environ.get("AWS_SECRET_ACCESS_KEY") or environ.get("LITESTREAM_SECRET_ACCESS_KEY")):
                raise ConfigError("AWS_SECRET_ACCESS_KEY is not set (needed for the s3:// REPLICA_URL)")
        elif not _FILE_URL.fullmatch(replica_url):
            raise ConfigError(
                "REPLICA_URL must be s3://bucket/path?endpoint=...&region=... or file:///absolute/path, "
                f"not {replica_url!r}"
            )
        runtime_dir = Path(environ.get("TMPDIR") or "/tmp")
        socket_path = _text(
            environ, "LITESTREAM_SOCKET", str(runtime_dir / f"hello-birthday-litestream.{os.getpid()}.sock")
        )
        if len(socket_path) > _SOCKET_PATH_MAX:
            raise ConfigError(
                f"LITESTREAM_SOCKET is too long for a unix socket path ({len(socket_path)} > "
                f"{_SOCKET_PATH_MAX} characters)"
            )
        # Litestream names databases by absolute path: resolved against the folder the stack was
        # started from.
        database = Path(os.path.realpath(_text(environ, "DATABASE_PATH", str(Config().database_path))))
        return cls(
            database=database,
            replica_url=replica_url,
            litestream_config=root / "litestream.yml",
            gunicorn_config=root / "gunicorn.conf.py",
            litestream_socket=Path(socket_path),
            litestream_metrics_addr=_loopback_address(environ, "LITESTREAM_METRICS_ADDR", "127.0.0.1:9090"),
            restore_timeout=seconds_setting(environ, "RESTORE_TIMEOUT", 300, 1),
            ready_timeout=seconds_setting(environ, "LITESTREAM_READY_TIMEOUT", 30, 1),
            lease_ttl=seconds_setting(environ, "WRITER_LEASE_TTL", 30, 3, 600),
            runtime_dir=runtime_dir,
            dropped_ca_bundle=bool(environ.get("AWS_CA_BUNDLE")),
        )

    def child_environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The environment for Litestream and gunicorn: the resolved settings, no AWS_CA_BUNDLE."""
        env = litestream_environment(environ)
        env.update(
            DATABASE_PATH=str(self.database),
            REPLICA_URL=self.replica_url,
            LITESTREAM_SOCKET=str(self.litestream_socket),
            LITESTREAM_METRICS_ADDR=self.litestream_metrics_addr,
        )
        return env


@dataclass(frozen=True, slots=True)
class ContainerSettings:
    """The image's own (its Dockerfile sets them), for ``scripts/container-entrypoint.py``, which runs
    as root before the service: who the service runs as, and the volume handed to that user."""

    app_user: str = "app"
    data_dir: Path = Path("/data")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "ContainerSettings":
        defaults = cls()
        return cls(
            app_user=_text(environ, "APP_USER", defaults.app_user),
            data_dir=Path(_text(environ, "DATA_DIR", str(defaults.data_dir))),
        )


@dataclass(frozen=True, slots=True)
class S3Credentials:
    """What the supervisor's own S3 client (the lease, the boot checks) signs with; Litestream reads
    the same variables itself."""

    access_key_id: str | None
    secret_access_key: str | None
    region: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "S3Credentials":
        env = os.environ if environ is None else environ
        return cls(
            access_key_id=env.get("AWS_ACCESS_KEY_ID") or env.get("LITESTREAM_ACCESS_KEY_ID"),
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or env.get("LITESTREAM_SECRET_ACCESS_KEY"),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        )


def litestream_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a ``litestream`` process gets: Litestream 0.5.17's S3 client cannot start with
    AWS_CA_BUNDLE set ("unable to add custom RootCAs HTTPClient"), so it never gets it."""
    return {key: value for key, value in environ.items() if key != "AWS_CA_BUNDLE"}


def environment() -> Mapping[str, str]:
    """This process's environment, for the S3 client and the children it starts: the one place that
    hands ``os.environ`` to the rest."""
    return os.environ


def replica_url_from_env(environ: Mapping[str, str] | None = None) -> str:
    """REPLICA_URL, for the commands that read the replica (``replica-url``); ConfigError when unset."""
    env = os.environ if environ is None else environ
    url = env.get("REPLICA_URL", "").strip()
    if not url:
        raise ConfigError("REPLICA_URL is not set")
    return url


def machine_identity(
    environ: Mapping[str, str] | None = None, machine_id_file: Path = Path("/etc/machine-id")
) -> str:
    """What "the same machine" means for the writer lease: something a copied volume cannot carry.

    - Fly.io: ``FLY_MACHINE_ID``. A forked volume or a machine cloned from a snapshot is another
      machine, with another ID; a crash and restart on the same machine keeps it.
    - Kubernetes: ``POD_UID`` (the downward API's ``metadata.uid``, deploy/kubernetes/sqlite). A
      StatefulSet's recreated pod keeps its host name, but never its UID.
    - Elsewhere: the host name and the host's ``/etc/machine-id``, which lives on the host, not on
      the data volume.
    """
    env = os.environ if environ is None else environ
    for name in ("FLY_MACHINE_ID", "POD_UID"):
        if value := env.get(name, "").strip():
            return value
    host = socket.gethostname()
    try:
        machine_id = machine_id_file.read_text().strip()
    except OSError:
        machine_id = ""
    return f"{host}/{machine_id}" if machine_id else host


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _text(env, name, default).lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {env.get(name)!r}")
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise ConfigError(f"{name} must be a port number from 0 to 65535, not {raw!r}")
    return int(raw)


def _pid(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{name} must be a process id, not {raw!r}")
    return int(raw)


def _count(env: Mapping[str, str], name: str, default: int, lowest: int, highest: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not lowest <= int(raw) <= highest:
        raise ConfigError(f"{name} must be a whole number from {lowest} to {highest}, not {raw!r}")
    return int(raw)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    return seconds_setting(env, name, default)


def seconds_setting(
    env: Mapping[str, str], name: str, default: float, lowest: float | None = None, highest: float = 3600
) -> float:
    """A number of seconds: above 0 (or from ``lowest``) and at most ``highest``; the default if unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if lowest is None:
        if not 0 < value <= highest:
            raise ConfigError(
                f"{name} must be a number of seconds above 0 and at most {highest:g}, not {raw!r}"
            )
    elif not lowest <= value <= highest:
        raise ConfigError(f"{name} must be a number of seconds from {lowest:g} to {highest:g}, not {raw!r}")
    return value


def _log_level(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip().upper() or default
    if raw not in _LOG_LEVELS:
        raise ConfigError(f"{name} must be one of {', '.join(_LOG_LEVELS)}, not {raw!r}")
    return raw


def _timezone(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip() or default
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{name} must be an IANA time zone name such as UTC, not {raw!r}") from None
    return raw


def _loopback_address(env: Mapping[str, str], name: str, default: str) -> str:
    """host:port on this machine only: Litestream's listener also serves Go's /debug/pprof/ pages."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    host, _, port = raw.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(
            f"{name} must be a loopback address and port such as 127.0.0.1:9090, not {raw!r}: that "
            "listener also serves Go's /debug/pprof/ and /debug/vars, and Litestream's metrics reach "
            "Prometheus through the service's METRICS_PORT instead"
        )
    return raw


def _database_url(env: Mapping[str, str], name: str) -> str:
    """Empty (the SQLite profile), or a postgresql:// URL whose sslmode, if given, is one libpq knows."""
    raw = env.get(name, "").strip()
    if not raw:
        return ""
    parts = urlsplit(raw)
    shown = PostgresSettings(raw).safe_url
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"{name} must be a postgresql:// URL (postgresql://user:password@host:5432/database), "
            f"not {shown!r}; leave it unset for the SQLite file at DATABASE_PATH"
        )
    query = parse_qs(parts.query)
    if not parts.hostname and "host" not in query:
        raise ConfigError(f"{name} must name a host: postgresql://user:password@host:5432/database")
    for mode in query.get("sslmode", []):
        if mode not in _SSL_MODES:
            raise ConfigError(f"{name}'s sslmode must be one of {', '.join(_SSL_MODES)}, not {mode!r}")
    return raw
