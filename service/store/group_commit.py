"""Concurrent writes sharing one transaction, for a store with one writing connection.

The backend says how to write a batch in one transaction and one row on its own, and which errors
belong to a write; this module decides who shares which transaction and who hears what.
"""

import asyncio
import logging
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

Row = TypeVar("Row")
Row_contra = TypeVar("Row_contra", contravariant=True)

# A group commit takes at most this many writes: enough to absorb any burst 64 connections make,
# small enough that one transaction stays short for Litestream's checkpoints.
MAX_BATCH = 256


class BatchWriter(Protocol[Row_contra]):
    """How a backend writes: a batch in one transaction (rolled back if it fails), or one row."""

    @property
    def write_errors(self) -> tuple[type[Exception], ...]:
        """Errors that belong to the rows written (a refused row, a full disk), not to the connection."""
        ...

    async def write_batch(self, rows: Sequence[Row_contra]) -> None: ...

    async def write_one(self, row: Row_contra) -> None: ...

    def fails_every_write(self, exc: BaseException) -> bool:
        """Whether this error would meet every other write too (a full disk), so retrying is useless."""
        ...


Pending = list[tuple[Row, "asyncio.Future[None]"]]


class GroupCommit(Generic[Row]):
    """Concurrent upserts share one transaction on the one writing connection.

    While one batch is being committed, the upserts that arrive wait in ``_pending``; the next batch
    takes them all (up to ``MAX_BATCH``) into one transaction. Each caller's future resolves only
    after the COMMIT of its own batch returned, so a 204 still means committed. A batch that fails
    is rolled back and its writes retried one by one: a bad row fails only its own caller. A full
    disk fails every write of the batch at once instead: each retry would meet the same full disk,
    and a full batch of them only delays every caller's answer. A fault outside any one write (the
    connection closed under it) fails the whole batch's callers rather than leaving them waiting.
    """

    def __init__(self, writer: BatchWriter[Row]) -> None:
        self._writer = writer
        self._pending: Pending[Row] = []
        self._flushing: asyncio.Task[None] | None = None

    def upsert(self, row: Row) -> "asyncio.Future[None]":
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())
        return future

    async def wait_idle(self) -> None:
        """Return once every write queued so far is committed or has failed."""
        while self._flushing is not None:
            await asyncio.shield(self._flushing)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                try:
                    await self._commit(batch)
                except Exception as exc:
                    for _, future in batch:
                        _settle(future, exc)
        finally:
            self._flushing = None

    async def _commit(self, batch: Pending[Row]) -> None:
        errors = self._writer.write_errors
        if len(batch) > 1:
            try:
                await self._writer.write_batch([row for row, _ in batch])
            except errors as exc:
                if self._writer.fails_every_write(exc):
                    _settle_all(batch, exc)
                    return
                log.warning(
                    "group commit failed; retrying its writes one by one",
                    extra={"writes": len(batch), "reason": str(exc)},
                )
            else:
                for _, future in batch:
                    _settle(future, None)
                return
        for index, (row, future) in enumerate(batch):
            try:
                await self._writer.write_one(row)
            except errors as exc:
                if self._writer.fails_every_write(exc):
                    _settle_all(batch[index:], exc)
                    return
                _settle(future, exc)
            else:
                _settle(future, None)


def _settle(future: "asyncio.Future[None]", error: BaseException | None) -> None:
    if future.done():  # the caller gave up (cancelled); the write itself stands
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(None)


def _settle_all(batch: "Pending[Row]", error: BaseException) -> None:
    for _, future in batch:
        _settle(future, error)
