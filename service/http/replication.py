"""``DURABILITY=replicated``: a PUT's 204 waits until the replica holds the transaction that wrote it.

Litestream 0.5.17's control socket answers ``POST /sync`` with ``{"path", "wait": true, "timeout"}``
only once it has copied the WAL, up to its end as it stands when the request arrives, into a new LTX
file and uploaded every LTX file up to that one to the replica (``store.go: Store.SyncDB`` then
``db.go: DB.SyncAndWait``: ``DB.Sync``, then ``Replica.Sync``, each upload acknowledged before the
next). So the rule this module keeps is: **a sync request sent after a COMMIT returned, and answered
200, covers that commit.** The TXIDs in the answer count Litestream's LTX files, not SQLite's commits,
and both are read after the sync: they are not compared.

Litestream does not group requests: each one that finds new WAL frames cuts a file and makes a PUT
of its own. So the grouping is done here. Commits that finish while no sync is in flight start one
(``Round``); commits that finish while one is in flight wait for the next, which starts as soon as it
returns and covers all of them. At most one sync is in flight; none is sent while no PUT waits; a
sync that finds nothing new costs the object store nothing.

Each PUT waits at most ``REPLICATION_ACK_TIMEOUT`` from its commit. Past it, or when the round fails
(Litestream gone, the object store refusing or not answering), the PUT is answered 503: the date is
stored on this machine and will most likely reach the replica, but that is not confirmed. The socket
call has its own deadline a second longer, because Litestream can hold a request past the ``timeout``
it was given (while it opens the database against an unreachable replica).
"""

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from service.http.metrics import Metrics

log = logging.getLogger(__name__)


class Unconfirmed(Exception):
    """The replica did not confirm the commit; the message says what happened, ``outcome`` is the
    label it is counted under: ``timeout`` (no answer in time), ``failed`` (the sync came back with an
    error, or the socket could not be reached), ``unavailable`` (writes refused meanwhile: Litestream
    gone, the lease lost or lapsed)."""

    def __init__(self, reason: str, outcome: str = "unavailable") -> None:
        super().__init__(reason)
        self.outcome = outcome


@dataclass
class _Round:
    """PUTs waiting for the same sync: every one committed before it is sent."""

    waiters: list["asyncio.Future[None]"] = field(default_factory=list)


class ReplicationAcks:
    """Confirms commits through Litestream's control socket, one sync for every commit before it."""

    def __init__(self, socket: Path, database: Path, timeout: float, metrics: Metrics) -> None:
        self.socket = socket
        self.database = database
        self.timeout = timeout
        self.metrics = metrics
        self._next = _Round()
        self._in_flight: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._failing_since: float | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.socket)),
            timeout=aiohttp.ClientTimeout(total=self._server_timeout() + 1),
        )

    async def close(self) -> None:
        if self._in_flight is not None:
            self._in_flight.cancel()
            await asyncio.gather(self._in_flight, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def confirm(self, refusal: Callable[[], str | None]) -> None:
        """Return once a sync sent after this call came back 200 and ``refusal()`` (the write gate:
        Litestream gone, the lease lost or lapsed) still says nothing. Else ``Unconfirmed``: after
        REPLICATION_ACK_TIMEOUT, or as soon as the round it joined failed."""
        began = time.monotonic()
        try:
            await self._wait_for_round()
            reason = refusal()
            if reason is not None:
                raise Unconfirmed(reason)
        except Unconfirmed as exc:
            self.metrics.count_replication_ack(exc.outcome, time.monotonic() - began)
            raise
        self.metrics.count_replication_ack("confirmed", time.monotonic() - began)

    async def _wait_for_round(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._next.waiters.append(waiter)
        if self._in_flight is None:
            self._start_round()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.timeout)
        except TimeoutError:
            waiter.cancel()
            raise Unconfirmed(f"the replica did not confirm within {self.timeout:g} s", "timeout") from None

    def _start_round(self) -> None:
        # The round is taken before the request is sent: whatever commits from now on waits for the next.
        batch, self._next = self._next, _Round()
        self._in_flight = asyncio.create_task(self._run(batch))

    async def _run(self, batch: _Round) -> None:
        try:
            problem = await self._sync()
        except asyncio.CancelledError:
            problem = "the service is stopping"
            raise
        finally:
            for waiter in batch.waiters:
                if waiter.done():
                    continue  # its PUT timed out meanwhile
                if problem is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(Unconfirmed(problem, "failed"))
            self._in_flight = None
            if self._next.waiters and not _stopping():
                self._start_round()
        self._note(problem)

    async def _sync(self) -> str | None:
        """One ``POST /sync`` with ``wait``; None on 200, else what went wrong."""
        assert self._session is not None, "open() first"
        body = {"path": str(self.database), "wait": True, "timeout": self._server_timeout()}
        self.metrics.replication_syncs += 1
        try:
            async with self._session.post("http://litestream/sync", json=body) as answer:
                if answer.status == 200:
                    await answer.read()
                    return None
                text = (await answer.text()).strip()
                return f"Litestream answered {answer.status}: {text[:300]}"
        except TimeoutError:
            return f"Litestream did not answer within {self._server_timeout() + 1} s"
        except aiohttp.ClientError as exc:
            return f"Litestream's control socket could not be reached: {exc}"

    def _server_timeout(self) -> int:
        # Whole seconds: Litestream's request field is an int; 0 would mean 30 s.
        return max(1, math.ceil(self.timeout))

    def _note(self, problem: str | None) -> None:
        """One log line when syncs start failing and one when they work again, not one per round."""
        if problem is not None and self._failing_since is None:
            self._failing_since = time.monotonic()
            self.metrics.replication_sync_failures += 1
            log.error("the replica does not confirm writes; PUTs are answered 503", extra={"reason": problem})
        elif problem is not None:
            self.metrics.replication_sync_failures += 1
        elif self._failing_since is not None:
            seconds = round(time.monotonic() - self._failing_since, 1)
            self._failing_since = None
            log.warning("the replica confirms writes again", extra={"unconfirmed_seconds": seconds})


def _stopping() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
