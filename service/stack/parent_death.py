"""Tie a child process's life to its parent's: Linux's parent-death signal.

A process started by the supervisor (Litestream, gunicorn) or by gunicorn (the worker) must not
outlive its parent: an orphan would keep the port, the database and, for Litestream, the replica.
"""

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
# Loaded once, in the parent: a child forked from a process with other threads must not load a
# library (dlopen takes the loader's lock, which another thread may hold at the fork).
_LIBC = ctypes.CDLL(None, use_errno=True)
_PRCTL = _LIBC.prctl


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when ``parent`` dies; exit now if it already has.

    Call it in the child, right after the fork. The signal is tied to the parent's thread that forked
    this process, so the parent must fork from a thread that lives as long as it does (its main one).
    """
    if _PRCTL(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the call above took effect
        os._exit(1)
