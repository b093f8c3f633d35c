"""The WAL index (the ``-shm`` file) that SQLite keeps beside a database in WAL mode, read in place.

Two numbers from it describe the WAL at any moment, without a query or a lock: ``mxFrame``, the frames
the WAL holds (committed), and ``nBackfill``, how many of them a checkpoint has already copied into the
database file. Their difference is the work the next checkpoint has left. The layout is SQLite's own
(wal.c): two copies of the 48-byte index header, ``mxFrame`` at byte 16 of the first; then the
checkpoint information, ``nBackfill`` first, at byte 96. Both are in the machine's byte order.
"""

import mmap
import os
import struct
from pathlib import Path

_MX_FRAME = struct.Struct("=I")
_MX_FRAME_OFFSET = 16
_BACKFILL_OFFSET = 96
_NEEDED = 136


class WalIndex:
    """Reads ``<database>-shm`` through a read-only shared mapping; ``frames()`` is None until it exists."""

    def __init__(self, database: Path) -> None:
        self._path = Path(f"{database}-shm")
        self._map: mmap.mmap | None = None

    def frames(self) -> tuple[int, int] | None:
        """(frames in the WAL, frames already copied into the database), or None when unreadable."""
        if self._map is None and not self._open():
            return None
        assert self._map is not None
        return (
            _MX_FRAME.unpack_from(self._map, _MX_FRAME_OFFSET)[0],
            _MX_FRAME.unpack_from(self._map, _BACKFILL_OFFSET)[0],
        )

    def _open(self) -> bool:
        try:
            fd = os.open(self._path, os.O_RDONLY)
        except OSError:
            return False
        try:
            if os.fstat(fd).st_size < _NEEDED:
                return False
            self._map = mmap.mmap(fd, _NEEDED, mmap.MAP_SHARED, mmap.PROT_READ)
            return True
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
