"""Litestream restore from a local S3 server (moto): the seeded database replicated once, then the
``litestream restore`` of it timed and its users counted."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pysqlite3.dbapi2 as sqlite

from scripts.benchmark.objectstore import local_s3, s3_env
from scripts.benchmark.seed import copy_database


def time_restore(workdir: Path, seeded: Path, users: int) -> float:
    """Replicate ``seeded`` to a local S3 server once, then time ``litestream restore`` of it."""
    folder = workdir / "restore"
    database = folder / "hello.db"
    copy_database(seeded, database)
    env = s3_env()
    bin_dir = Path(sys.executable).parent
    with local_s3(folder) as s3:
        url = s3.url("hello.db")

        def litestream(*arguments: str) -> None:
            command = [str(bin_dir / "litestream"), *arguments]
            subprocess.run(command, env=env, capture_output=True, timeout=300, check=True)

        litestream("replicate", "-once", str(database), url)
        restored = folder / "restored.db"
        started = time.perf_counter()
        litestream("restore", "-o", str(restored), url)
        seconds = time.perf_counter() - started
        check = sqlite.connect(str(restored))
        try:
            count = check.execute("SELECT count(*) FROM users").fetchone()[0]
        finally:
            check.close()
        if count != users:
            raise RuntimeError(f"restored {count} users, expected {users}")
        return seconds
