"""For the PostgreSQL profile's drills (an outage, a rolling replacement behind HAProxy): the
production server started on a PostgreSQL database, and a bounded load of clients that PUT a new user
and then GET it, every answer recorded. Each client stops by itself after ``seconds`` or once the load
has ``max_answers`` answers, whichever comes first.
"""

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import ClientThreads, start_gunicorn, username


def start_gunicorn_on_postgres(
    url: str, port: int, log: Path, settings: Mapping[str, str]
) -> "subprocess.Popen[bytes]":
    """gunicorn with the production config (gunicorn.conf.py) and ``DATABASE_URL``, in its own session."""
    return start_gunicorn(port, log, **{"DATABASE_URL": url, "LOG_LEVEL": "WARNING", **settings})


@dataclass(frozen=True, slots=True)
class Answer:
    started: float  # time.monotonic() when the request was sent
    finished: float  # ... and when its answer (or the failure) came
    method: str
    name: str
    status: int  # 0 when nothing answered
    retry_after: str | None = None

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def succeeded(self) -> bool:
        return self.status in (200, 204)


@dataclass
class PutThenGet(ClientThreads):
    base_url: str
    clients: int = 4
    pause: float = 0.0
    client_timeout: float = 15.0
    seconds: float = 90.0
    max_answers: int = 200_000
    prefix: str = "c"
    answers: list[Answer] = field(default_factory=list)
    # name -> date of birth of every 204: the writes the service promised to keep.
    acknowledged: dict[str, str] = field(default_factory=dict)

    def start(self) -> "PutThenGet":
        self._start_clients(self.clients, self.seconds)
        return self

    def stop(self) -> None:
        assert self._stop_clients(timeout=self.client_timeout + 5), "a client did not stop"

    def since(self, moment: float) -> list[Answer]:
        """The answers to requests sent at or after ``moment``."""
        with self._lock:
            return [answer for answer in self.answers if answer.started >= moment]

    def failed(self) -> list[Answer]:
        with self._lock:
            return [answer for answer in self.answers if not answer.succeeded]

    def successes_since(self, moment: float) -> int:
        """Successful answers that arrived at or after ``moment``."""
        with self._lock:
            return sum(1 for answer in self.answers if answer.finished >= moment and answer.succeeded)

    def longest_gap(self) -> float:
        """The longest time between two successful answers, in seconds."""
        with self._lock:
            times = sorted(answer.finished for answer in self.answers if answer.succeeded)
        return max((later - earlier for earlier, later in zip(times, times[1:], strict=False)), default=0.0)

    def _request(self, method: str, name: str, body: bytes | None) -> Answer:
        request = urllib.request.Request(
            f"{self.base_url}/hello/{name}",
            data=body,
            method=method,
            headers={"Content-Type": "application/json"} if body else {},
        )
        started = time.monotonic()
        retry_after = None
        try:
            with urllib.request.urlopen(request, timeout=self.client_timeout) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            status, retry_after = exc.code, exc.headers.get("Retry-After")
            exc.read()
        except OSError:
            status = 0
        return Answer(started, time.monotonic(), method, name, status, retry_after)

    def _client(self, index: int, deadline: float) -> None:
        number = 0
        while not self._stopping.is_set() and time.monotonic() < deadline:
            with self._lock:
                if len(self.answers) >= self.max_answers:
                    return
            name = username(number, prefix=f"{self.prefix}{chr(ord('a') + index)}")
            born = f"19{number % 90 + 10:02d}-0{number % 9 + 1}-1{number % 9}"
            put = self._request("PUT", name, json.dumps({"dateOfBirth": born}).encode())
            got = self._request("GET", name, None) if put.status == 204 else None
            with self._lock:
                self.answers.append(put)
                if put.status == 204:
                    self.acknowledged[name] = born
                if got is not None:
                    self.answers.append(got)
            number += 1
            if self.pause:
                time.sleep(self.pause)  # pacing: a steady load, not a flood
