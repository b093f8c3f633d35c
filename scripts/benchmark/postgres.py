"""The bench's own PostgreSQL server on loopback (``scripts/pg_cluster.py``), and its databases."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

from scripts.benchmark.servers import children, cpu_seconds
from scripts.pg_cluster import PostgresServer, server_binaries
from service.store.copy import copy_data


class PostgresDatabases:
    """One PostgreSQL server on loopback for the whole run: a seeded template database per user count,
    and a fresh database cloned from it for every sample (as the SQLite scenarios copy their file)."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.version = server.sql("SHOW server_version")[0][0]
        self.templates: dict[int, str] = {}
        self.made = 0

    def seed(self, users: int, seeded: Path) -> None:
        """Copy the seeded SQLite file's users into a template database (``copy-data``, verified)."""
        name = f"seed_{users}"
        self.server.sql(f"CREATE DATABASE {name}")
        report = asyncio.run(copy_data(str(seeded), self.server.url(name)))
        if not report.verified or report.target.rows != users:
            raise RuntimeError(f"seeding PostgreSQL with {users} users did not verify: {report}")
        self.server.sql("CHECKPOINT")
        self.templates[users] = name

    def fresh(self, users: int) -> str:
        """The URL of a new database holding the ``users`` seeded users."""
        self.made += 1
        name = f"bench_{self.made}"
        self.server.sql(f"CREATE DATABASE {name} TEMPLATE {self.templates[users]}")
        self.server.sql("CHECKPOINT")
        return self.server.url(name)

    def cpu_seconds(self) -> float:
        """CPU time of the postmaster and every process it runs now (the pool's backends among them)."""
        root = self.server.postmaster_pid()
        total = 0.0
        for pid in [root, *children(root)]:
            with contextlib.suppress(OSError, IndexError):
                total += cpu_seconds(pid)
        return total


@contextlib.contextmanager
def postgres_databases(cpus: str) -> Iterator[PostgresDatabases]:
    """A PostgreSQL server started on 127.0.0.1, pinned to ``cpus``; stopped and removed afterwards."""
    bin_dir = server_binaries()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb)")
    server = PostgresServer(bin_dir)
    try:
        server.init()
        server.start(cpus)
        yield PostgresDatabases(server)
    finally:
        server.remove()
