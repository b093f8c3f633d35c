"""Standard error stays JSON lines: a plain line written to it becomes a JSON record, JSON passes."""

import io
import json

from service.logs import JsonLinesOnly


def test_plain_lines_become_records_and_json_lines_pass_as_they_are() -> None:
    out = io.StringIO()
    stream = JsonLinesOnly(out, logger="gunicorn.error")
    access = '{"time": "2026-12-06T00:00:00.000+00:00", "level": "info", "message": "request"}'
    stream.write(access + "\n[Errno 98] address already in ")
    stream.write('use\n\n{"not": "closed"\n')
    stream.flush()
    lines = out.getvalue().splitlines()
    assert lines[0] == access
    assert json.loads(lines[1])["message"] == "[Errno 98] address already in use"
    assert json.loads(lines[1])["logger"] == "gunicorn.error"
    assert json.loads(lines[2])["message"] == '{"not": "closed"'
    assert len(lines) == 3
