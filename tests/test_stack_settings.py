"""The supervisor's own settings: defaults, and a clear refusal of a bad value."""

from pathlib import Path

import pytest

from service.settings import ConfigError
from service.stack.supervisor import StackSettings

BASE = {
    "REPLICA_URL": "file:///tmp/replica",
    "LITESTREAM_SOCKET": "/tmp/ls.sock",
    "DATABASE_PATH": "/d/hello.db",
}


def test_defaults() -> None:
    settings = StackSettings.from_env(BASE, Path("/app"))
    assert settings.lease_ttl == 30 and settings.restore_timeout == 300 and settings.ready_timeout == 30
    assert settings.database == Path("/d/hello.db")
    assert settings.litestream_config == Path("/app/litestream.yml")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WRITER_LEASE_TTL", "2"),
        ("WRITER_LEASE_TTL", "601"),
        ("WRITER_LEASE_TTL", "soon"),
        ("RESTORE_TIMEOUT", "0"),
    ],
)
def test_bad_values_are_named(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        StackSettings.from_env({**BASE, name: value}, Path("/app"))


def test_a_missing_replica_is_named() -> None:
    with pytest.raises(ConfigError, match="REPLICA_URL"):
        StackSettings.from_env({"LITESTREAM_SOCKET": "/tmp/ls.sock"}, Path("/app"))
