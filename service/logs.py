"""One JSON object per log line, so that Fly's log shipping and any log store can parse it."""

import asyncio
import io
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
            self._queue(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """Write a line already formatted as this handler's formatter would (see ``AccessLog``)."""
        with self.lock or _NO_LOCK:
            self._queue(line)

    def _queue(self, line: str) -> None:
        try:
            loop = asyncio.get_running_loop()
            if not self._pending:
                loop.call_soon(self.flush)
        except RuntimeError:  # no loop in this thread, or it is closing: write now
            self._pending.append(line)
            self.flush()
            return
        self._pending.append(line)

    def flush(self) -> None:
        with self.lock or _NO_LOCK:
            if self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                # Every line is a JSON object (ours): a JsonLinesOnly stream takes them without
                # checking each line again.
                write = self.stream.write
                if type(self.formatter) is JsonFormatter and isinstance(self.stream, JsonLinesOnly):
                    write = self.stream.write_json_lines
                write(text)
            if hasattr(self.stream, "flush"):
                self.stream.flush()


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_LOCK = _NoLock()


class AccessLog:
    """The one access line per request, on the ``service.access`` logger.

    The line is what ``logger.info("request", extra=fields)`` writes through ``JsonFormatter``, and
    with the set-up ``configure_logging`` makes (one ``JsonLineHandler`` at the root, no filters on
    the way) it is formatted here directly: a ``LogRecord``, the walk through the handlers and the
    generic formatter cost more than the rest of the request's own work. With any other set-up (a
    test's capturing handler, a filter, another handler) the record goes through logging as usual.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._name = _encode_string(logger.name)
        self._second = -1
        self._second_text = ""

    def _direct_handler(self) -> JsonLineHandler | None:
        """The only handler the record would reach, if it is ours and nothing filters on the way."""
        found: JsonLineHandler | None = None
        logger: logging.Logger | None = self._logger
        while logger is not None:
            if logger.filters:
                return None
            for handler in logger.handlers:
                if (
                    found is not None
                    or type(handler) is not JsonLineHandler
                    or type(handler.formatter) is not JsonFormatter
                    or handler.filters
                    or handler.level > logging.INFO
                ):
                    return None
                found = handler
            logger = logger.parent if logger.propagate else None
        return found

    def request(
        self, method: str, route: str, path: str, status: int, duration_ms: float, request_id: str
    ) -> None:
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handler = self._direct_handler()
        if handler is None or type(duration_ms) is not float or not math.isfinite(duration_ms):
            record = logging.LogRecord(logger.name, logging.INFO, __file__, 0, "request", (), None)
            record.__dict__.update(
                method=method,
                route=route,
                path=path,
                status=status,
                duration_ms=duration_ms,
                request_id=request_id,
            )
            logger.handle(record)
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        handler.write_line(
            f'{{"time": "{self._second_text}.{int((now - second) * 1000):03d}+00:00", "level": "info", '
            f'"logger": {self._name}, "message": "request", "method": {_encode_string(method)}, '
            f'"route": {_encode_string(route)}, "path": {_encode_string(path)}, "status": {int(status)}, '
            f'"duration_ms": {float.__repr__(duration_ms)}, "request_id": {_encode_string(request_id)}}}\n'
        )


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
    # The JSON lines carry no thread names, which each record would otherwise look up on every
    # request. The process id stays: gunicorn's own messages format it ("Worker exiting (pid: %s)").
    logging.logThreads = False
    logging.logMultiprocessing = False
    if hasattr(logging, "logAsyncioTasks"):
        logging.logAsyncioTasks = False


class JsonLinesOnly(io.TextIOBase):
    """A text stream that passes JSON lines through and turns any other line into a JSON record.

    gunicorn prints a worker's boot error to standard error as a plain line besides logging it, and a
    library may print too: wrapped this way (``gunicorn.conf.py`` does it for the worker), standard
    error stays JSON lines. A line that already is a JSON object (starts with ``{`` and ends with
    ``}``) is written as it is, without parsing: the access lines pass at no cost.
    """

    def __init__(self, stream: TextIO, logger: str = "stderr") -> None:
        super().__init__()
        self._stream = stream
        self._logger = _encode_string(logger)
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        out = []
        for line in lines:
            if line.startswith("{") and line.endswith("}"):
                out.append(line + "\n")
            elif line.strip():
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
                out.append(
                    f'{{"time": "{stamp}+00:00", "level": "error", "logger": {self._logger}, '
                    f'"message": {_encode_string(line)}}}\n'
                )
        if out:
            self._stream.write("".join(out))
        return len(text)

    def write_json_lines(self, text: str) -> int:
        """Lines known to be JSON objects, each ending in a newline (``JsonLineHandler``'s), written
        as they are. A partial line already waiting stays waiting until a ``write`` ends it."""
        self._stream.write(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()
