"""Settings from the environment: defaults, and bad values that stop start-up naming the variable."""

import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from service.http import keys
from service.http.app import create_app
from service.settings import Config, ConfigError


def test_defaults() -> None:
    config = Config.from_env({})
    assert (config.host, config.port, config.metrics_port) == ("127.0.0.1", 8080, 9091)
    assert config.database_path == Path("data/hello.db")
    assert (config.log_level, config.timezone) == ("INFO", "UTC")


def test_values_are_read() -> None:
    config = Config.from_env(
        {
            "HOST": "0.0.0.0",
            "PORT": "9000",
            "DATABASE_PATH": "/data/x.db",
            "METRICS_PORT": "9100",
            "LOG_LEVEL": "debug",
            "TIMEZONE": "Europe/Paris",
            "SHUTDOWN_TIMEOUT": "12.5",
            "HEADER_TIMEOUT": "5",
            "BODY_TIMEOUT": "7.5",
            "MAX_CONNECTIONS": "300",
        }
    )
    assert config == Config(
        host="0.0.0.0",
        port=9000,
        database_path=Path("/data/x.db"),
        metrics_port=9100,
        log_level="DEBUG",
        timezone="Europe/Paris",
        shutdown_timeout=12.5,
        header_timeout=5.0,
        body_timeout=7.5,
        max_connections=300,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("PORT", "-1"),
        ("METRICS_PORT", "x"),
        ("LOG_LEVEL", "LOUD"),
        ("TIMEZONE", "Mars/Olympus"),
        ("TIMEZONE", "../etc/passwd"),
        ("SHUTDOWN_TIMEOUT", "0"),
        ("SHUTDOWN_TIMEOUT", "soon"),
        ("HEADER_TIMEOUT", "0"),
        ("BODY_TIMEOUT", "forever"),
        ("MAX_CONNECTIONS", "0"),
        ("MAX_CONNECTIONS", "1.5"),
        ("DISK_FULL_RESUME_MB", "0"),
        ("DISK_FULL_RESUME_MB", "1.5"),
        ("LITESTREAM_METRICS_ADDR", "127.0.0.1"),
        ("LITESTREAM_METRICS_ADDR", "127.0.0.1:http"),
        ("DATABASE_URL", "mysql://db.internal/hello"),
        ("DATABASE_URL", "db.internal:5432"),
        ("DATABASE_URL", "postgresql:///hello"),
        ("DATABASE_URL", "postgresql://db.internal/hello?sslmode=always"),
        ("DATABASE_POOL_SIZE", "0"),
        ("DATABASE_POOL_SIZE", "ten"),
        ("DATABASE_STATEMENT_TIMEOUT", "0"),
        ("DATABASE_STATEMENT_TIMEOUT", "601"),
        ("DATABASE_CONNECT_TIMEOUT", "soon"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})


@pytest.mark.parametrize("address", ["127.0.0.1:9090", "127.0.0.2:9090", "localhost:9090", "[::1]:9090"])
def test_litestream_metrics_address_on_loopback_is_accepted(address: str) -> None:
    assert Config.from_env({"LITESTREAM_METRICS_ADDR": address}).litestream_metrics_addr == address
    assert Config.from_env({}).litestream_metrics_addr == ""


@pytest.mark.parametrize(
    "address", ["0.0.0.0:9090", ":9090", "[::]:9090", "10.0.0.5:9090", "fly-local-6pn:9090"]
)
def test_litestream_metrics_address_off_the_machine_is_refused(address: str) -> None:
    # Litestream's metrics port also serves Go's /debug/pprof/: it must not be reachable from elsewhere.
    with pytest.raises(ConfigError, match="LITESTREAM_METRICS_ADDR.*loopback.*pprof"):
        Config.from_env({"LITESTREAM_METRICS_ADDR": address})


def test_metrics_port_must_differ_from_the_public_port() -> None:
    with pytest.raises(ConfigError, match="METRICS_PORT"):
        Config.from_env({"PORT": "9000", "METRICS_PORT": "9000"})


def test_the_process_stops_with_a_message_that_names_the_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        env={"PORT": "eighty", "DATABASE_PATH": str(tmp_path / "x.db"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "PORT" in result.stderr and "eighty" in result.stderr
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("zone", ["UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago"])
def test_the_timezone_sets_the_services_today(zone: str) -> None:
    # Kiritimati is UTC+14 and Pago Pago UTC-11: for most of each day one of them is on another date.
    app = create_app(Config.from_env({"TIMEZONE": zone}))
    before = datetime.now(ZoneInfo(zone)).date()
    today = app[keys.CLOCK]()
    assert before <= today <= datetime.now(ZoneInfo(zone)).date()


def test_the_postgresql_profile_settings() -> None:
    config = Config.from_env({})
    assert config.database_url == ""  # the default profile: SQLite at DATABASE_PATH, no server
    config = Config.from_env(
        {
            "DATABASE_URL": "postgresql://hello:s3cret@db.internal:5432/hello?sslmode=verify-full",
            "DATABASE_POOL_SIZE": "20",
            "DATABASE_STATEMENT_TIMEOUT": "1.5",
            "DATABASE_CONNECT_TIMEOUT": "3",
        }
    )
    settings = config.postgres
    assert settings.url == "postgresql://hello:s3cret@db.internal:5432/hello?sslmode=verify-full"
    assert (settings.pool_size, settings.statement_timeout, settings.connect_timeout) == (20, 1.5, 3.0)
    # Logs and error messages show the URL without its password.
    assert settings.safe_url == "postgresql://hello:***@db.internal:5432/hello?sslmode=verify-full"


def test_a_bad_database_url_is_named_without_its_password() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL") as caught:
        Config.from_env({"DATABASE_URL": "mysql://hello:s3cret@db/hello"})
    assert "s3cret" not in str(caught.value)


def test_the_readme_settings_table_and_the_settings_module_agree_both_ways() -> None:
    """Every variable the settings module reads is in the README's table, and every row of the table
    is a variable it reads (the supervisor's hand-overs and aliases aside, named here)."""
    import re

    from service import contract
    from service.settings import STACK_SETTINGS

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    table = readme[readme.index("## Settings") : readme.index("\n## ", readme.index("## Settings") + 5)]
    documented: set[str] = set()
    for row in re.findall(r"^\| (.+?) \|", table, re.MULTILINE):
        documented |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", row))
    source = (root / "service" / "settings.py").read_text()
    read = set(re.findall(r'(?:env|environ)(?:\.get\(|, )"([A-Z][A-Z0-9_]+)"', source))
    assert len(read) > 20, read
    # Aliases Litestream also accepts, the system's temporary folder, and a variable that is dropped.
    not_settings = {
        "LITESTREAM_ACCESS_KEY_ID",
        "LITESTREAM_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "TMPDIR",
        "AWS_CA_BUNDLE",
        # The image's own, set in its Dockerfile for the entrypoint (ContainerSettings).
        "APP_USER",
        "DATA_DIR",
    }
    assert read - set(contract.HANDED_OVER) - not_settings <= documented, "read but not in the README"
    assert documented <= set(STACK_SETTINGS), "in the README but read by nobody"
    assert set(STACK_SETTINGS) <= documented, "listed for --help but not in the README"
