"""The drills' fixtures; what they hand out is in stack.py.

- ``s3_server`` (session): a real ``moto_server`` on 127.0.0.1 with the bucket ``drills`` created,
  reached through a relay that ``s3_server.stop()`` and ``start()`` close and reopen (an outage that
  keeps moto's data). ``replica_url(prefix)`` builds a REPLICA_URL.
- ``stack_factory`` (function): ``stack_factory(data_dir, replica_url=...)`` starts scripts/start.sh
  in its own process group and returns a ``Stack`` once /readyz answers; every process group it
  started is killed at teardown, even when the test fails.
  ``port=`` reuses a port (a replacement on the same address), ``wait=False`` returns at once (for
  start-ups that must fail), ``extra_env=`` adds or overrides settings.
- ``replica_url``: a fresh replica path in the bucket for this test.
- ``s3_or_file_replica``: a replica of this test's own, in the S3 server for one run of the test and
  in a file:// folder for another.
- ``machine``: a ``Machine`` whose volume is ``tmp_path / "data"``, replicating to ``replica_url``;
  ``machine.start()`` boots the stack on it through ``stack_factory``.
"""

import signal
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.drills.stack import (
    Machine,
    Relay,
    RelayFactory,
    S3Server,
    Stack,
    StackFactory,
    launch_stack,
    start_moto,
)
from tests.support import stop_group


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    process, port = start_moto()
    relay = Relay(port)
    try:
        relay.open()
        server = S3Server(process=process, moto_port=port, relay=relay)
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        relay.close()
        stop_group(process, signal.SIGTERM)


@pytest.fixture
def replica_url(s3_server: S3Server) -> str:
    """A replica path of its own in the drills bucket."""
    return s3_server.replica_url(f"drill-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[StackFactory]:
    started: list[Stack] = []

    def start(
        data_dir: Path,
        *,
        replica_url: str,
        wait: bool = True,
        port: int | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> Stack:
        log_path = tmp_path / f"stack-{len(started)}.log"
        stack = launch_stack(data_dir, log_path, replica_url=replica_url, port=port, extra_env=extra_env)
        started.append(stack)
        if wait:
            stack.wait_ready()
        return stack

    try:
        yield start
    finally:
        for stack in started:
            stop_group(stack.process, signal.SIGKILL)


@pytest.fixture(params=["s3", "file"])
def s3_or_file_replica(request: pytest.FixtureRequest, s3_server: S3Server, tmp_path: Path) -> str:
    if request.param == "s3":
        return s3_server.replica_url(f"replica-{tmp_path.name}")
    return f"file://{tmp_path / 'replica'}"


@pytest.fixture
def machine(stack_factory: StackFactory, replica_url: str, tmp_path: Path) -> Machine:
    return Machine(tmp_path / "data", replica_url, stack_factory)


@pytest.fixture
def relays(s3_server: S3Server) -> Iterator[RelayFactory]:
    """``relays()``: a relay of its own to the S3 server (a machine's own network path, which a drill
    can cut or slow without touching the others'); all are healed and closed at teardown."""
    made: list[Relay] = []

    def make() -> Relay:
        relay = Relay(s3_server.moto_port)
        relay.open()
        made.append(relay)
        return relay

    try:
        yield make
    finally:
        for relay in made:
            relay.heal()
            relay.close()
