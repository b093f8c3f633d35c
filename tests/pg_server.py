"""A real PostgreSQL server for the tests (``scripts/pg_cluster.py``, shared with the benchmark):
``initdb`` in a temporary folder, started on a free loopback port, stopped and removed at the end.

The server refuses to run as root, so as root (CI) every server command runs as ``nobody``; as any
other user it runs as that user. Without Debian's ``postgresql`` package the tests that need it skip
and say why, unless ``REQUIRE_POSTGRES=1`` or ``CI=true`` (``.ci/run`` installs the package), where
they fail instead.
"""

import contextlib
import os
from collections.abc import Iterator

import pytest

from scripts.pg_cluster import PostgresServer, server_binaries

__all__ = ["PostgresServer", "postgres_server", "required", "server_binaries", "skip_or_fail"]


def required() -> bool:
    return os.environ.get("REQUIRE_POSTGRES") == "1" or os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> None:
    if required():
        pytest.fail(f"PostgreSQL is required here (REQUIRE_POSTGRES=1 or CI=true) but {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A started server, stopped and removed afterwards; skips (or fails, see ``required``) without one."""
    bin_dir = server_binaries()
    if bin_dir is None:
        skip_or_fail(
            "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "apt-get install postgresql"
        )
        raise AssertionError("unreachable")
    server = PostgresServer(bin_dir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()
