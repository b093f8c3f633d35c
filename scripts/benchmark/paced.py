"""Requests at a fixed rate (an open loop, like wrk2): a steady load, where wrk sends as fast as the
server answers.

Request ``i`` is due at ``start + i / rate`` and is sent then, whether or not the earlier ones were
answered; its latency counts from when it was due, so a server that falls behind is charged for
the wait (no coordinated omission), and so is a request that waits for a free connection (all
``connections`` busy) or for the client itself. The requests are wrk's (``lua/``): GETs of seeded
users drawn at random, PUTs under random names of 6 to 16 letters with random dates from 1940 to
2015, or the 90/10 mix; all made before the first is due.

The client is one process on the load generator's core: HTTP/1.1 over keep-alive connections (up
to ``connections``, opened as requests find none free, then used in turn), the requests written
straight to asyncio transports on uvloop's loop and the answers parsed as they arrive: about
100-200 µs of client CPU per request on the bench's machine, most of it in waking up for each (a
third of its core at 2,000/s, 40% at 5,000/s; an aiohttp client needed 2 to 2.6 times that and fell
behind at 3,000/s). It wakes for the next due time on a Linux timerfd (the loop's own timers round
to the millisecond, the whole latency of a fast request) and checks its schedule whenever an answer
arrives too. A request goes out late only when the client was busy or kept off its core: ``lag``
(when the client took it up, less its due time) says by how much, and the latencies include it.
With ``--realtime`` it runs under SCHED_FIFO where allowed, so that other processes on the load
core do not delay it (on a shared machine they did, by up to 1.9 s in 5). What remains on a virtual
machine is the time its idle core takes to wake: up to a few milliseconds at times. Requests due in
the first ``warmup`` seconds are sent but not counted.

    python -m scripts.benchmark.paced --port PORT --rate PER_SECOND --seconds SECONDS
                                      [--kind put|get|mix] [--users N] [--warmup SECONDS]
                                      [--connections N] [--realtime]

prints one line, ``PACED_JSON {...}`` (``PacedLoad``'s fields), and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import gc
import json
import math
import os
import random
import string
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from scripts.benchmark.seed import username_for

HOST = "127.0.0.1"
# Keep-alive connections at most, opened as requests need them. A request due while all are busy
# waits for the first to free, and its latency shows it.
CONNECTIONS = 256
KINDS = ("get", "put", "mix")
# After the last request is due, answers are awaited this long; those still missing count as errors.
DRAIN_SECONDS = 30.0
# The client kept its schedule when it took up 99% of its requests within this long of their due
# time, or within a tenth of the p99 latency it measured (so that its own lateness, counted in the
# latencies, does not make their tail): ``PacedLoad.kept_schedule``.
LAG_LIMIT_MS = 1.0
# With --realtime, the client's priority under SCHED_FIFO: above every ordinary process on the load
# core, so that none delays it when a request falls due (it sleeps in between, taking only the CPU it
# needs; the kernel keeps 5% of each second for the others whatever it does).
REALTIME_PRIORITY = 10


# timerfd_create(2) and timerfd_settime(2), through ctypes (Python 3.11 has no os.timerfd_*).
_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _ItimerSpec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


@dataclass
class PacedLoad:
    rate: float  # offered, requests per second
    seconds: float  # from the first counted due time to the last answer
    sent: int  # requests counted (due after the warm-up)
    statuses: dict[str, int]  # answers by status code; "error" for no answer
    p50_ms: float
    p99_ms: float
    max_ms: float
    kind: str = "put"
    p999_ms: float = 0.0
    send_seconds: float = 0.0  # from the first counted request's send to the last one's
    written: int = 0  # counted requests sent (all but those still waiting for a connection at the end)
    lag_p99_ms: float = 0.0  # the client's lateness (send less due), 99th percentile
    lag_max_ms: float = 0.0  # and its worst
    waited: int = 0  # requests that found every connection busy and waited for one
    runqueue_ms: float = 0.0  # how long the client waited for its core, over the whole run (schedstat)
    client_cpu: float = 0.0  # the client's CPU time from its first due request to its end, over that time
    realtime: bool = False  # the client ran under SCHED_FIFO (--realtime, and allowed to)
    answered_all: int = 0  # answers to every request, the warm-up's too

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("2"))

    @property
    def not_ok(self) -> int:
        return self.sent - self.ok

    @property
    def achieved_rate(self) -> float:
        """Requests sent per second over the counted window (their first send to their last)."""
        return (self.written - 1) / self.send_seconds if self.send_seconds > 0 and self.written > 1 else 0.0

    @property
    def kept_schedule(self) -> bool:
        return self.lag_p99_ms <= max(LAG_LIMIT_MS, self.p99_ms / 10)


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (``share`` from 0 to 100) of values already sorted; 0 for none."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(share / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def make_requests(kind: str, count: int, users: int, port: int, seed: int | None = None) -> list[bytes]:
    """``count`` HTTP/1.1 requests as wrk's scripts make them: ``get`` draws a seeded user (one of
    ``users``), ``put`` a new name and date of birth, ``mix`` a PUT one time in ten."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    rng = random.Random(seed)
    host = f"Host: {HOST}:{port}\r\n"
    found: list[bytes] = []
    for _ in range(count):
        if kind == "put" or (kind == "mix" and rng.random() < 0.1):
            name = "".join(rng.choices(string.ascii_letters, k=rng.randint(6, 16)))
            born = f"{rng.randint(1940, 2015):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            body = json.dumps({"dateOfBirth": born})
            found.append(
                (
                    f"PUT /hello/{name} HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n{body}"
                ).encode()
            )
        else:
            name = username_for(rng.randrange(max(users, 1)))
            found.append(f"GET /hello/{name} HTTP/1.1\r\n{host}\r\n".encode())
    return found


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one request in flight, its answer parsed as it arrives."""

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.index = -1  # the request in flight, or -1
        self.buffer = bytearray()
        self.status = ""
        self.body_left = -1  # bytes of body still to come; -1 while reading the head
        self.chunked = False
        self.closing = False  # the server said Connection: close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport's subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, index: int) -> None:
        assert self.transport is not None
        self.index = index
        self.transport.write(self.client.requests[index])

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answered = False
        while (status := self._next_answer()) is not None:
            index, self.index = self.index, -1
            if index < 0:
                # An answer to no request: the server closing a connection it found idle (a 408),
                # which it will close; nothing more is sent on it, and nothing counted.
                self.closing = True
            else:
                self.client.record(index, status)
                answered = True
        if self.closing:
            self.client.drop(self)
            if self.transport is not None:
                self.transport.close()
        elif answered and self.index < 0:
            # Free again only once every answer that came is read: an unasked one behind the last
            # answer must not be taken for the next request's.
            self.client.free(self)
        if answered:
            self.client.pump()

    def _next_answer(self) -> str | None:
        """The status of the next whole answer in the buffer, taken out of it; None before one is whole."""
        buffer = self.buffer
        if self.body_left < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            head = bytes(buffer[:end]).lower()
            del buffer[: end + 4]
            self.status = head[9:12].decode()
            self.closing = self.closing or b"\r\nconnection: close" in head
            self.chunked = b"\r\ntransfer-encoding: chunked" in head
            at = head.find(b"\r\ncontent-length:")
            if self.chunked or at < 0:
                self.body_left = 0
            else:
                stop = head.find(b"\r\n", at + 2)
                self.body_left = int(head[at + 17 : stop if stop >= 0 else None])
        if self.chunked:
            # Enough for the small error pages a server might send this way: up to the last chunk.
            end = buffer.find(b"0\r\n\r\n")
            if end < 0:
                return None
            del buffer[: end + 5]
        elif len(buffer) < self.body_left:
            return None
        else:
            del buffer[: self.body_left]
        self.body_left = -1
        return self.status

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        index, self.index = self.index, -1
        self.client.lost(self, index)


class _Timer:
    """A wake-up at an exact ``time.monotonic()`` instant: a Linux timerfd watched by the event loop.
    The loop's own timers round to the millisecond, which is the whole latency of a fast request;
    polling instead would keep the client's core busy, and lose it to any other process there."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create")
        self.loop = loop
        self.callback = callback
        self.armed = False
        loop.add_reader(self.fd, self._fired)

    def at(self, when: float) -> None:
        seconds, fraction = divmod(when, 1.0)
        spec = _ItimerSpec(_Timespec(0, 0), _Timespec(int(seconds), max(1, int(fraction * 1e9))))
        if self._libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) < 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime")
        self.armed = True

    def _fired(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)
        self.armed = False
        self.callback()

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        os.close(self.fd)


class _Client:
    """The schedule, the connections and what came back, by request."""

    def __init__(self, requests: list[bytes], rate: float, port: int, connections: int) -> None:
        self.requests = requests
        self.rate = rate
        self.port = port
        self.connections = connections
        self.loop = asyncio.get_running_loop()
        self.start = 0.0
        self.next = 0  # the next request to fall due
        # Free connections, the longest free first: each is used in turn, as by many clients. They are
        # opened as requests need them, so none sits unused past the server's HEADER_TIMEOUT (which
        # answers 408 on a connection that sent nothing, and closes it).
        self.idle: collections.deque[_Connection] = collections.deque()
        self.open_connections: set[_Connection] = set()
        self.opening = 0
        self.backlog: collections.deque[int] = collections.deque()  # due, waiting for a connection
        self.timer = _Timer(self.loop, self.tick)
        self.closed = False
        total = len(requests)
        self.late = array("d", bytes(8 * total))  # how late the client took it up: now less due
        self.sent_at = array("d", bytes(8 * total))  # monotonic() when written; 0 if never
        self.latency = array("d", bytes(8 * total))  # from due to the end of the answer
        self.waited = bytearray(total)  # 1 where the request found all ``connections`` busy
        self.statuses = [""] * total
        self.answers = 0
        self.written = 0  # requests written to a connection
        self.done: asyncio.Future[None] = self.loop.create_future()

    def due(self, index: int) -> float:
        return self.start + index / self.rate

    async def connect(self) -> None:
        """The first connection: the others open as requests find none free."""
        self.opening += 1
        await self.open()

    async def open(self) -> None:
        try:
            _, protocol = await self.loop.create_connection(lambda: _Connection(self), HOST, self.port)
        except OSError:
            if self.closed or not self.open_connections:
                raise
            # Refused (the server at its connection cap?): the backlog waits for those open, and shows it.
            return
        finally:
            self.opening -= 1
        self.open_connections.add(protocol)
        self.free(protocol)

    def more(self) -> None:
        """Open one more connection for the backlog, unless ``connections`` are open or opening."""
        if not self.closed and len(self.open_connections) + self.opening < self.connections:
            self.opening += 1
            self.loop.create_task(self.open())

    def begin(self) -> None:
        self.start = time.monotonic()
        self.pump()

    def pump(self) -> None:
        """Send every request now due: on a free connection, or into the backlog."""
        now = time.monotonic()
        total = len(self.requests)
        while self.next < total:
            index = self.next
            due = self.start + index / self.rate
            if due > now:
                break
            self.next += 1
            self.late[index] = now - due
            if self.idle:
                self.sent_at[index] = now
                self.written += 1
                self.idle.popleft().send(index)
                continue
            self.backlog.append(index)
            if len(self.open_connections) + self.opening >= self.connections:
                self.waited[index] = 1
            elif len(self.backlog) > self.opening:
                self.more()
        if self.next < total and not self.timer.armed:
            self.timer.at(self.due(self.next))

    def tick(self) -> None:
        self.pump()

    def free(self, connection: _Connection) -> None:
        if self.backlog:
            index = self.backlog.popleft()
            self.sent_at[index] = time.monotonic()
            self.written += 1
            connection.send(index)
        else:
            self.idle.append(connection)

    def record(self, index: int, status: str) -> None:
        self.latency[index] = time.monotonic() - self.due(index)
        self.statuses[index] = status
        self.answers += 1
        if self.answers == len(self.requests) and not self.done.done():
            self.done.set_result(None)

    def drop(self, connection: _Connection) -> None:
        """Send nothing more on ``connection``: the server is closing it."""
        if connection in self.idle:
            self.idle.remove(connection)

    def lost(self, connection: _Connection, index: int) -> None:
        self.open_connections.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)
        if index >= 0:
            self.record(index, "error")
        if self.backlog and not self.open_connections and not self.opening:
            # Nothing left to send the backlog on: try again shortly (the server may be restarting).
            self.loop.call_later(0.1, self.more)
        elif len(self.backlog) > self.opening:
            self.more()

    def close(self) -> None:
        self.closed = True
        self.timer.close()
        for connection in list(self.open_connections):
            if connection.transport is not None:
                connection.transport.close()


def _runqueue_seconds() -> float:
    """The time this process has spent runnable but waiting for a core (Linux's schedstat); 0 elsewhere."""
    try:
        return int(Path("/proc/self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


async def paced(
    port: int,
    rate: float,
    seconds: float,
    kind: str = "put",
    users: int = 1,
    warmup: float = 0.0,
    connections: int = CONNECTIONS,
    seed: int | None = None,
) -> PacedLoad:
    """``rate * (warmup + seconds)`` requests of ``kind`` to ``HOST:port``, each sent when due; the
    answers to those due after ``warmup`` counted."""
    skipped = round(rate * warmup)
    total = skipped + max(1, round(rate * seconds))
    client = _Client(make_requests(kind, total, users, port, seed), rate, port, connections)
    await client.connect()
    gc.collect()
    gc.disable()  # no collector pauses in the window: the requests are made, answers are short-lived
    queued, cpu = _runqueue_seconds(), time.process_time()
    try:
        client.begin()
        due_last = client.due(total - 1)
        try:
            await asyncio.wait_for(client.done, due_last - time.monotonic() + DRAIN_SECONDS)
        except TimeoutError:
            pass
    finally:
        gc.enable()
        client.close()
    end = time.monotonic()
    queued, cpu = _runqueue_seconds() - queued, time.process_time() - cpu
    counted = range(skipped, total)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    lags: list[float] = []
    last_answer = client.due(skipped)
    for index in counted:
        status = client.statuses[index] or "error"  # never answered within the drain
        statuses[status] += 1
        answered = bool(client.statuses[index])
        latency = client.latency[index] if answered else end - client.due(index)
        latencies.append(latency)
        last_answer = max(last_answer, client.due(index) + latency)
        if index < client.next:
            lags.append(client.late[index])
    latencies.sort()
    lags.sort()
    sends = [client.sent_at[index] for index in counted if client.sent_at[index]]
    return PacedLoad(
        rate=rate,
        seconds=last_answer - client.due(skipped),
        sent=len(counted),
        statuses=dict(statuses),
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        max_ms=latencies[-1] * 1000,
        kind=kind,
        p999_ms=percentile(latencies, 99.9) * 1000,
        send_seconds=max(sends) - min(sends) if sends else 0.0,
        written=len(sends),
        lag_p99_ms=percentile(lags, 99) * 1000,
        lag_max_ms=(lags[-1] if lags else 0.0) * 1000,
        waited=sum(client.waited[skipped:]),
        runqueue_ms=queued * 1000,
        client_cpu=cpu / (end - client.start),
        answered_all=client.answers,
    )


async def paced_puts(port: int, rate: float, seconds: float) -> PacedLoad:
    """``rate * seconds`` PUTs to ``HOST:port``, each sent when due; every answer awaited."""
    return await paced(port, rate, seconds, "put")


def realtime() -> bool:
    """Put this process under SCHED_FIFO at ``REALTIME_PRIORITY``, if allowed: whether it is now."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
    except (AttributeError, OSError):
        return False
    return True


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (it is with the service), asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def parse(output: str) -> PacedLoad:
    """The ``PacedLoad`` that ``main`` printed."""
    for line in output.splitlines():
        if line.startswith("PACED_JSON "):
            return PacedLoad(**json.loads(line.removeprefix("PACED_JSON ")))
    raise RuntimeError(f"the paced client printed no result:\n{output}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, required=True, help="seconds of counted requests")
    parser.add_argument("--kind", choices=KINDS, default="put")
    parser.add_argument("--users", type=int, default=1, help="seeded users the GETs draw from")
    parser.add_argument(
        "--warmup", type=float, default=0.0, help="seconds of requests sent first, not counted"
    )
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument(
        "--realtime", action="store_true", help="run under SCHED_FIFO where allowed (as root on Linux)"
    )
    args = parser.parse_args(argv)
    under_fifo = realtime() if args.realtime else False
    loop = new_event_loop()
    try:
        load = loop.run_until_complete(
            paced(args.port, args.rate, args.seconds, args.kind, args.users, args.warmup, args.connections)
        )
    finally:
        loop.close()
    load.realtime = under_fifo
    print("PACED_JSON " + json.dumps(asdict(load)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
