"""One server under one scenario's load: started afresh on a fresh copy of its database, loaded with wrk,
measured and stopped."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from scripts.benchmark.postgres import PostgresDatabases
from scripts.benchmark.scenarios import BEFORE, OTHER_LOOP, Scenario
from scripts.benchmark.seed import copy_database
from scripts.benchmark.servers import HOST, ROOT, Server, cpu_seconds, free_port, running
from scripts.benchmark.wrk import Load, lua_script, run_wrk


@dataclass
class Sample:
    load: Load
    peak_rss_mb: float
    ready_s: float
    cpu_us_per_request: float
    db_cpu_us_per_request: float = 0.0


@dataclass
class Bench:
    """The run's work folder, load lengths, seeded databases and servers (PostgreSQL, --before)."""

    workdir: Path
    duration: float
    warmup: float
    seeded: Mapping[int, Path]
    postgres: PostgresDatabases | None = None
    before: Path | None = None
    litestream_config: Path | None = None  # the stack's litestream.yml, when not the project's own
    scripts: dict[tuple[str, int], Path] = field(default_factory=dict, init=False)
    started: int = field(default=0, init=False)

    def name(self, *parts: object) -> str:
        """A name of its own for the next server started: ``parts`` and a count, joined with dashes."""
        self.started += 1
        return "-".join(str(part) for part in (*parts, self.started))

    def script(self, kind: str, users: int) -> Path:
        key = (kind, users)
        if key not in self.scripts:
            path = self.workdir / f"{kind}-{users}.lua"
            path.write_text(lua_script(kind, users))
            self.scripts[key] = path
        return self.scripts[key]

    def sample(self, scenario: Scenario) -> Sample:
        """Start the scenario's server afresh (a fresh copy of its database), load it, stop it."""
        name = self.name(scenario.server, scenario.kind, scenario.users)
        script = self.script(scenario.kind, scenario.users)
        with self.server(scenario, name) as server:
            if self.warmup > 0:
                run_wrk(server.port, script, self.warmup)
            database = self.postgres if scenario.server == "postgres" else None
            cpu_before = cpu_seconds(server.worker)
            db_before = database.cpu_seconds() if database else 0.0
            load = run_wrk(server.port, script, self.duration)
            cpu = cpu_seconds(server.worker) - cpu_before
            db_cpu = database.cpu_seconds() - db_before if database else 0.0
            per_request = 1e6 / max(load.requests, 1)
            return Sample(
                load, server.peak_rss_mb(), server.ready_seconds, cpu * per_request, db_cpu * per_request
            )

    def database(self, name: str) -> Path:
        return self.workdir / name / "hello.db"

    def server(
        self, scenario: Scenario, name: str, extra: Mapping[str, str] | None = None
    ) -> AbstractContextManager[Server]:
        port = free_port()
        log = self.workdir / f"{name}.log"
        extra = dict(extra or {})
        cwd = ROOT
        if scenario.server.endswith(BEFORE):
            if self.before is None:
                raise RuntimeError("a scenario of the earlier revision without --before")
            cwd = self.before
            scenario = Scenario(
                scenario.title, scenario.server.removesuffix(BEFORE), scenario.kind, scenario.users
            )
        suffix, worker_class = OTHER_LOOP
        if scenario.server.endswith(suffix):
            extra["GUNICORN_CMD_ARGS"] = f"--worker-class {worker_class}"
            scenario = Scenario(
                scenario.title, scenario.server.removesuffix(suffix), scenario.kind, scenario.users
            )
        if scenario.server == "reference":
            env = self.service_env(self.workdir / "unused.db", port) | extra
            command = ["gunicorn", "-c", "gunicorn.conf.py", "scripts.bench_reference:app_factory"]
            return running(name, command, env, port, log)
        if scenario.server == "postgres":
            if self.postgres is None:
                raise RuntimeError("a PostgreSQL scenario without a PostgreSQL server")
            env = self.service_env(self.workdir / "unused.db", port)
            env["DATABASE_URL"] = self.postgres.fresh(scenario.users)
            return running(name, ["gunicorn", "-c", "gunicorn.conf.py"], env, port, log, cwd=cwd)
        database = self.database(name)
        copy_database(self.seeded[scenario.users], database)
        env = self.service_env(database, port) | dict(extra)
        if scenario.server == "service":
            return running(name, ["gunicorn", "-c", "gunicorn.conf.py"], env, port, log, cwd=cwd)
        env |= {
            "REPLICA_URL": f"file://{self.workdir / name / 'replica'}",
            "LITESTREAM_METRICS_ADDR": f"{HOST}:{free_port()}",
            "LITESTREAM_SOCKET": str(self.workdir / f"litestream-{self.started}.sock"),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        } | extra
        command = ["bash", "scripts/start.sh"]
        if self.litestream_config is not None and cwd == ROOT:
            command = ["python", "-m", "service", "supervise", str(self.stack_root(self.litestream_config))]
        return running(name, command, env, port, log, 120, cwd=cwd)

    def stack_root(self, litestream_config: Path) -> Path:
        """A folder like the project's for ``supervise``: the given litestream.yml, our gunicorn.conf.py."""
        root = self.workdir / "stack-root"
        if not root.is_dir():
            root.mkdir()
            shutil.copyfile(litestream_config, root / "litestream.yml")
            shutil.copyfile(ROOT / "gunicorn.conf.py", root / "gunicorn.conf.py")
        return root

    def service_env(self, database: Path, port: int) -> dict[str, str]:
        return {
            "HOST": HOST,
            "PORT": str(port),
            "METRICS_HOST": HOST,
            "METRICS_PORT": str(free_port()),
            "DATABASE_PATH": str(database),
            "LOG_LEVEL": "INFO",
        }
