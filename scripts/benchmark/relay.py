"""A TCP relay on loopback that adds a fixed delay each way: an object store in the same region, made
of a local one.

Every chunk read from one side is written to the other ``delay`` seconds after it was read, in the
order it was read (one queue and one writer per direction), so a request and its answer each take
``delay`` longer and a round trip ``2 * delay`` longer, whatever their size; a chunk read 1 ms after
another is still delivered 1 ms after it, as on a network, not after it. End of stream is passed on
``delay`` after it was seen too. Not modelled: the TCP and TLS handshakes of a new connection
(accepted here at once; Go's HTTP client, Litestream's, keeps its connections open), bandwidth and
loss.

    python -m scripts.benchmark.relay --port PORT --target-port PORT [--delay SECONDS]

listens on 127.0.0.1 only, forwards to 127.0.0.1, and exits on SIGTERM or SIGINT, or when the process
that started it is gone, so that it stops with the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"
CHUNK = 65536
ROOT = Path(__file__).resolve().parents[2]


class DelayRelay:
    """Accepts on ``HOST:port`` (0: any free port, see ``port`` once started) and relays every
    connection to ``HOST:target_port``, each direction ``delay`` seconds late."""

    def __init__(self, target_port: int, delay: float, port: int = 0) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = port
        self.connections = 0
        self.bytes_up = 0  # client to target
        self.bytes_down = 0  # target to client
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, HOST, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> DelayRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            try:
                target_reader, target_writer = await asyncio.open_connection(HOST, self.target_port)
            except OSError:
                return
            try:
                await asyncio.gather(
                    self._pipe(client_reader, target_writer, up=True),
                    self._pipe(target_reader, client_writer, up=False),
                )
            except asyncio.CancelledError:
                pass  # the relay is closing (asyncio's stream server of 3.11 logs a handler cancelled)
            finally:
                target_writer.close()
        finally:
            client_writer.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        """One direction: a reader that stamps each chunk with its due time, a writer that waits for it."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            try:
                while chunk := await reader.read(CHUNK):
                    queue.put_nowait((time.monotonic() + self.delay, chunk))
            except OSError:
                pass
            queue.put_nowait((time.monotonic() + self.delay, b""))  # end of stream, late like the rest

        async def write() -> None:
            while True:
                due, chunk = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    if not chunk:
                        if writer.can_write_eof():
                            writer.write_eof()
                        return
                    writer.write(chunk)
                    await writer.drain()
                except OSError:
                    return
                if up:
                    self.bytes_up += len(chunk)
                else:
                    self.bytes_down += len(chunk)

        reading = asyncio.create_task(read())
        try:
            await write()
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)


async def _serve_until_told(relay: DelayRelay) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    async with relay:
        print(f"relay listening on {HOST}:{relay.port}", flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if os.getppid() != parent:  # the run that started it is gone
                break


@contextlib.contextmanager
def relay_process(
    target_port: int, delay: float, port: int, log: Path, cpu: int | None = None
) -> Iterator[int]:
    """``python -m scripts.benchmark.relay`` on ``port`` (pinned to ``cpu`` if given), forwarding to
    ``target_port``; yields ``port`` once it accepts connections, and stops it on the way out."""
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    command = [*pin, sys.executable, "-m", "scripts.benchmark.relay", "--port", str(port)]
    command += ["--target-port", str(target_port), "--delay", str(delay)]
    with log.open("ab") as log_file:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=log_file, stderr=log_file, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the relay did not start; see {log}")
            time.sleep(0.05)
        yield port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True, help="the loopback port to listen on")
    parser.add_argument("--target-port", type=int, required=True, help="the loopback port to forward to")
    parser.add_argument("--delay", type=float, default=0.020, help="seconds added each way (default 0.020)")
    args = parser.parse_args(argv)
    asyncio.run(_serve_until_told(DelayRelay(args.target_port, args.delay, args.port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
