"""One JSON object per log line, so that Fly's log shipping and any log store can parse it."""

import asyncio
import json
import logging
import math
import sys
import time
from json.encoder import encode_basestring_ascii as _encode_string
from typing import Any, TextIO

# Attributes every LogRecord has; anything else was passed through ``extra=`` and is logged as a field.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, then the ``extra`` fields.

    It runs once per request (the access line), so it is written for speed: the time's text is
    built once per second, and strings, integers and finite floats are encoded directly (as
    ``json.dumps`` would encode them); anything else goes through the JSON encoder. The output is
    the same as ``json.dumps(entry, default=str)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._encode = json.JSONEncoder(default=str).encode
        self._second = -1
        self._second_text = ""

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"

    def _value(self, value: Any) -> str:
        # Exact types only: a bool is an int and a str subclass may encode otherwise.
        kind = type(value)
        if kind is str:
            return _encode_string(value)
        if kind is int:
            return int.__repr__(value)
        if kind is float and math.isfinite(value):
            return float.__repr__(value)
        return self._encode(value)

    def format(self, record: logging.LogRecord) -> str:
        value = self._value
        parts = [
            '{"time": "',
            self._time(record.created),
            '", "level": ',
            value(record.levelname.lower()),
            ', "logger": ',
            value(record.name),
            ', "message": ',
            value(record.getMessage()),
        ]
        for key, field in vars(record).items():
            if key not in _STANDARD:
                parts += (", ", _encode_string(str(key)), ": ", value(field))
        if record.exc_info:
            parts += (', "error": ', value(self.formatException(record.exc_info)))
        parts.append("}")
        return "".join(parts)


class JsonLineHandler(logging.StreamHandler[TextIO]):
    """Writes each record as one line; lines logged in an event loop's thread go out together.

    Under load one turn of the event loop answers many requests, each with its access line. Those
    lines are written with one system call at the start of the loop's next turn (well under a
    millisecond later) rather than one call each. Records from other threads, or with no loop
    running, are written at once.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            try:
                loop = asyncio.get_running_loop()
                if not self._pending:
                    loop.call_soon(self.flush)
            except RuntimeError:  # no loop in this thread, or it is closing: write now
                self._pending.append(line)
                self.flush()
                return
            self._pending.append(line)
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock or _NO_LOCK:
            if self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                self.stream.write(text)
            if hasattr(self.stream, "flush"):
                self.stream.flush()


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_LOCK = _NoLock()


def configure_logging(level: int) -> None:
    """Send every logger's records, as JSON lines, to standard error."""
    handler = JsonLineHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    # Lines still waiting in a handler being replaced are written first.
    for old in root.handlers:
        old.flush()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The JSON lines carry none of the thread and process names, which each record would otherwise
    # look up (a system call for the process id among them) on every request.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    if hasattr(logging, "logAsyncioTasks"):
        logging.logAsyncioTasks = False
