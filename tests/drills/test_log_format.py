"""One log format: every line the whole stack prints is one JSON object.

The stack (scripts/start.sh: the supervisor, Litestream, gunicorn's master and worker) runs at INFO
through a start, a PUT, a GET, a 4xx and a graceful stop; a second stack fails its restore (the
replica's files are damaged). Every line either printed is parsed as JSON, and each process is seen.
"""

import json
import socket
from pathlib import Path

import pytest

from tests.drills.stack import StackFactory
from tests.support import get_birthday, http_status, put_birthday


def _parse(text: str) -> list[dict[str, object]]:
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(entry, dict), f"line {number} is not a JSON object: {line!r}"
        entries.append(entry)
    return entries


@pytest.mark.slow
def test_every_line_of_the_stack_is_json(stack_factory: StackFactory, tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    info = {"LOG_LEVEL": "INFO"}
    stack = stack_factory(tmp_path / "data", replica_url=f"file://{replica}", extra_env=info)
    assert put_birthday(stack.base_url, "Alice") == 204
    assert get_birthday(stack.base_url, "Alice")[0] == 200
    assert http_status(stack.url("/hello/B0b")) == 400
    assert stack.terminate() == 0, stack.logs()
    entries = _parse(stack.logs())

    loggers = {str(entry.get("logger", "")) for entry in entries}
    assert "service.stack.supervisor" in loggers, "the supervisor"
    assert "gunicorn.error" in loggers, "gunicorn's master"
    assert "service.access" in loggers or any("status" in entry for entry in entries), "access lines"
    assert any("msg" in entry for entry in entries), "Litestream"
    assert not any("Error while closing socket" in json.dumps(entry) for entry in entries)

    # A failed restore: the replica's files are damaged, the next start on an empty volume fails.
    for ltx in replica.rglob("*.ltx"):
        ltx.write_bytes(b"not an LTX file")
    failed = stack_factory(tmp_path / "empty", replica_url=f"file://{replica}", extra_env=info, wait=False)
    assert failed.process.wait(timeout=120) != 0
    failed_entries = _parse(failed.logs())
    assert any("restore" in str(entry.get("message", "")) for entry in failed_entries), failed.logs()


@pytest.mark.slow
def test_a_worker_that_cannot_boot_is_one_json_record_with_its_traceback(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    with socket.socket() as taken:  # the metrics port is taken: the worker's start-up fails
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        stack = stack_factory(
            tmp_path / "data",
            replica_url=f"file://{tmp_path / 'replica'}",
            extra_env={"LOG_LEVEL": "INFO", "METRICS_PORT": port},
            wait=False,
        )
        assert stack.process.wait(timeout=120) != 0
    entries = _parse(stack.logs())
    with_traceback = [entry for entry in entries if "Traceback" in str(entry.get("error", ""))]
    assert with_traceback, stack.logs()
    assert not any("Traceback" in str(entry.get("message", "")) for entry in entries)
