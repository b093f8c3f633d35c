"""The OpenAPI document is valid, served, and true of the running service (checked by Schemathesis)."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import CheckFunction, positive_data_acceptance

from service.http.openapi import OPENAPI_DOCUMENT
from tests.support import free_port, wait_for_status

schema = schemathesis.openapi.from_dict(OPENAPI_DOCUMENT)


def test_the_document_is_valid_openapi_3_1() -> None:
    assert OPENAPI_DOCUMENT["openapi"].startswith("3.1")
    validate(OPENAPI_DOCUMENT)


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The development server, a real process on a real port and a real SQLite file."""
    port = free_port()
    data: Path = tmp_path_factory.mktemp("openapi")
    env = {
        **os.environ,
        "PORT": str(port),
        "METRICS_PORT": str(free_port()),
        "DATABASE_PATH": str(data / "hello.db"),
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "service"], env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_status(f"{url}/readyz")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_the_served_document_is_the_same(live_url: str) -> None:
    with urllib.request.urlopen(f"{live_url}/openapi.json", timeout=5) as response:
        assert json.load(response) == OPENAPI_DOCUMENT


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_service_keeps_to_its_document(case: schemathesis.Case[Any], live_url: str) -> None:
    excluded: list[CheckFunction] = []
    if case.method == "PUT":
        # A document cannot say "before today": a schema-valid date of tomorrow is rightly a 400.
        excluded.append(positive_data_acceptance)
    case.call_and_validate(base_url=live_url, excluded_checks=excluded)
