"""The supervisor's own settings: defaults, and a clear refusal of a bad value."""

from pathlib import Path

import pytest

from service.settings import ConfigError, StackSettings

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


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"REPLICA_URL": "http://bucket/x"}, "REPLICA_URL must be s3://"),
        ({"REPLICA_URL": "s3://bucket/x"}, "AWS_ACCESS_KEY_ID is not set"),
        ({"REPLICA_URL": "s3://bucket/x", "AWS_ACCESS_KEY_ID": "k"}, "AWS_SECRET_ACCESS_KEY is not set"),
        ({"REPLICA_URL": "file:///r", "LITESTREAM_SOCKET": "/" + "s" * 120}, "LITESTREAM_SOCKET is too long"),
        ({"REPLICA_URL": "file:///r", "LITESTREAM_METRICS_ADDR": "0.0.0.0:9090"}, "LITESTREAM_METRICS_ADDR"),
        ({"REPLICA_URL": "file:///r", "LITESTREAM_READY_TIMEOUT": "0"}, "LITESTREAM_READY_TIMEOUT"),
    ],
)
def test_every_rule_that_start_sh_had_now_lives_here(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        StackSettings.from_env(environ, Path("/app"))


def test_the_children_get_the_resolved_settings_and_no_ca_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {
        "REPLICA_URL": "s3://bucket/hello.db?endpoint=http://127.0.0.1:9000",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "DATABASE_PATH": "data/hello.db",
        "AWS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt",
        "TMPDIR": "/tmp",
    }
    settings = StackSettings.from_env(environ, Path("/app"))
    assert settings.database == tmp_path.resolve() / "data" / "hello.db"
    assert settings.dropped_ca_bundle
    child = settings.child_environment(environ)
    assert "AWS_CA_BUNDLE" not in child
    assert child["DATABASE_PATH"] == str(tmp_path.resolve() / "data" / "hello.db")
    assert child["LITESTREAM_METRICS_ADDR"] == "127.0.0.1:9090"
    assert child["LITESTREAM_SOCKET"].startswith("/tmp/hello-birthday-litestream.")
