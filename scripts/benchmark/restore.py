"""Litestream restore from a local S3 server (moto): the seeded database replicated once, then the
``litestream restore`` of it timed and its users counted."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pysqlite3.dbapi2 as sqlite

from scripts.benchmark.seed import copy_database
from scripts.benchmark.servers import HOST, free_port, http_status, stop


def time_restore(workdir: Path, seeded: Path, users: int) -> float:
    """Replicate ``seeded`` to a local S3 server once, then time ``litestream restore`` of it."""
    import boto3

    folder = workdir / "restore"
    database = folder / "hello.db"
    copy_database(seeded, database)
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"} | credentials
    bin_dir = Path(sys.executable).parent
    with (folder / "moto.log").open("ab") as log_file:
        moto = subprocess.Popen(
            [str(bin_dir / "moto_server"), "-H", HOST, "-p", str(port)],
            env=env,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while http_status(port, "/") is None:
            if moto.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the local S3 server did not start")
            time.sleep(0.05)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_boto_credentials())
        s3.create_bucket(Bucket="bench")
        url = f"s3://bench/hello.db?endpoint={endpoint}&region=us-east-1"

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
    finally:
        stop(moto)


def _boto_credentials() -> dict[str, str]:
    return {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
