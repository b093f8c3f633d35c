"""A local S3 server for the bench: ``moto_server`` on 127.0.0.1 with one bucket, and the environment
that Litestream and the stack need to use it."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scripts.benchmark.servers import HOST, free_port, http_status, stop

BUCKET = "bench"
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": REGION}


def s3_env() -> dict[str, str]:
    """This process's environment with the bench's credentials, without AWS_CA_BUNDLE (Litestream
    0.5.17's S3 client cannot start with it)."""
    return {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"} | CREDENTIALS


@dataclass(frozen=True)
class LocalS3:
    port: int
    bucket: str = BUCKET

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def url(self, path: str, port: int | None = None) -> str:
        """A Litestream replica URL for ``path`` in the bucket, through ``port`` (a relay) if given."""
        return f"s3://{self.bucket}/{path}?endpoint=http://{HOST}:{port or self.port}&region={REGION}"


@contextlib.contextmanager
def local_s3(folder: Path, cpu: int | None = None) -> Iterator[LocalS3]:
    """``moto_server`` on a free loopback port (pinned to ``cpu`` if given) with ``BUCKET`` made; stopped
    on the way out. Its log is ``folder/moto.log``."""
    import boto3

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    command = [*pin, str(Path(sys.executable).parent / "moto_server"), "-H", HOST, "-p", str(port)]
    with (folder / "moto.log").open("ab") as log_file:
        moto = subprocess.Popen(
            command, env=s3_env(), stdout=log_file, stderr=log_file, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 30
        while http_status(port, "/") is None:
            if moto.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the local S3 server did not start; see {folder / 'moto.log'}")
            time.sleep(0.05)
        server = LocalS3(port)
        s3 = boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        s3.create_bucket(Bucket=server.bucket)
        yield server
    finally:
        stop(moto)


# A request line of moto's log (werkzeug's): `127.0.0.1 - - [date] "PUT /bench/key HTTP/1.1" 200 -`,
# coloured by status when it is not a 200.
_REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)?([A-Z]+) (\S+) HTTP/[0-9.]+(?:\x1b\[0m)?" (\d{3})')


def operation(method: str, target: str) -> str:
    """The price class of one S3 request: PUT (PUT, COPY, POST), LIST, GET (GET, HEAD and the rest) or
    DELETE (DELETE, and DeleteObjects, a POST to ``?delete``)."""
    path, _, query = target.partition("?")
    on_bucket = path.strip("/").count("/") == 0
    if method == "PUT":
        return "PUT"
    if method == "POST":
        return "DELETE" if "delete" in urllib.parse.parse_qs(query, keep_blank_values=True) else "PUT"
    if method == "DELETE":
        return "DELETE"
    if method == "GET" and on_bucket:
        return "LIST"
    return "GET"


class RequestLog:
    """The requests moto logged, read between two offsets of its log and counted by price class,
    for the keys under one prefix of the bucket."""

    def __init__(self, path: Path, bucket: str = BUCKET) -> None:
        self.path = path
        self.bucket = bucket

    def offset(self) -> int:
        """Where the log's last whole line ends now."""
        data = self.path.read_bytes()
        return data.rfind(b"\n") + 1

    def count(self, prefix: str, start: int, end: int) -> Counter[str]:
        """Requests logged from ``start`` to ``end`` on keys under ``prefix/``, by ``operation``."""
        with self.path.open("rb") as log:
            log.seek(start)
            text = log.read(end - start).decode(errors="replace")
        return count_requests(text, self.bucket, prefix)


def count_requests(text: str, bucket: str, prefix: str) -> Counter[str]:
    """The requests in ``text`` (moto's log) on keys of ``bucket`` under ``prefix/``, by ``operation``."""
    found: Counter[str] = Counter()
    under = f"/{bucket}/{prefix}/"
    for match in _REQUEST.finditer(text):
        method, target = match.group(1), urllib.parse.unquote(match.group(2))
        path, _, query = target.partition("?")
        listed = urllib.parse.parse_qs(query).get("prefix", [""])[0]
        if path.startswith(under) or (path.rstrip("/") == f"/{bucket}" and listed.startswith(f"{prefix}/")):
            found[operation(method, target)] += 1
    return found
