"""What any store may raise that the handlers act on, whichever backend is behind it."""


class StoreUnavailable(Exception):
    """The database cannot be reached or did not answer in time; nothing is known to be written.

    The handlers answer 503 with Retry-After: the fault is a dependency's, and it passes.
    """


class StoreClosed(RuntimeError):
    """The store was closed; it takes no more work."""
