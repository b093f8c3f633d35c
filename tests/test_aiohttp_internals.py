"""The private names of aiohttp that the service relies on, checked against the installed aiohttp.

aiohttp is pinned (pyproject.toml), but an upgrade must not silently change what these mean: each
check fails with a message that says which module uses the name and what to re-read.
"""

import inspect

import pytest
from aiohttp import web_protocol, web_runner, web_server

# (class, private name, who relies on it)
SLOTS = [
    (web_protocol.RequestHandler, "_request_count", "service/http/server.py: a whole head arrived"),
    (web_protocol.RequestHandler, "_messages", "service/http/server.py: requests queued on the connection"),
    (web_protocol.RequestHandler, "_request_in_progress", "service/http/server.py: the head timer"),
    (web_protocol.RequestHandler, "_manager", "service/http/server.py: the connection gate"),
]


@pytest.mark.parametrize(("cls", "name", "user"), SLOTS, ids=[name for _, name, _ in SLOTS])
def test_request_handler_fields_the_limits_read(cls: type, name: str, user: str) -> None:
    assert name in getattr(cls, "__slots__", ()), (
        f"aiohttp's {cls.__name__} no longer has {name!r}; {user} reads it: re-read "
        "aiohttp/web_protocol.py before upgrading"
    )


def test_the_runner_still_builds_its_server_in_make_server() -> None:
    make_server = getattr(web_runner.AppRunner, "_make_server", None)
    assert make_server is not None and inspect.iscoroutinefunction(make_server), (
        "aiohttp's AppRunner._make_server changed; service/http/server.py overrides it to install the "
        "hardened server: re-read aiohttp/web_runner.py"
    )


def test_the_server_makes_one_handler_per_connection_by_being_called() -> None:
    """service/http/server.py swaps the server's class for one whose __call__ makes the hardened handler."""
    signature = inspect.signature(web_server.Server.__call__)
    assert list(signature.parameters) == ["self"], (
        "aiohttp's Server.__call__ changed its signature; service/http/server.py replaces it"
    )


def test_a_site_keeps_its_listening_server() -> None:
    assert "_server" in inspect.getsource(web_runner.BaseSite.__init__), (
        "aiohttp's BaseSite no longer keeps _server; service/http/app.py reads it for the metrics port"
    )
