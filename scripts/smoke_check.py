"""The smoke and contract check: the API's main cases through a public URL, after a deploy or a roll back.

    python3 scripts/smoke_check.py BASE_URL USER ATTEMPTS INTERVAL_SECONDS

``scripts/deploy.sh`` runs it against staging and production. First ``/readyz`` must answer 200 within
ATTEMPTS tries, INTERVAL seconds apart; then, each once, in order:

- ``PUT /hello/USER`` with a past date answers 204;
- ``GET /hello/USER`` answers 200 with ``{"message": "Hello, USER! Your birthday is in N day(s)"}`` (or
  "Happy birthday!"), N from 1 to 366;
- ``GET`` of a name never stored answers 404 as a problem document;
- ``PUT`` and ``GET`` of a name with a digit answer 400;
- ``PUT /hello/USER`` with a date in the future answers 400, and changes nothing (the GET answers as
  before).

Prints one line per case and exits 0 when every case holds, 1 naming the ones that failed (the last
line says how many), 2 on bad arguments. It writes one row, USER, and nothing else. Standard library
only (urllib), so that nothing beyond python3 is needed beside flyctl.
"""

import json
import random
import re
import string
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

PROBLEM_JSON = "application/problem+json"
DATE_OF_BIRTH = "2000-02-29"


@dataclass(frozen=True)
class Answer:
    status: int  # 0 when nothing answered
    content_type: str
    body: bytes

    def document(self) -> dict[str, object]:
        try:
            parsed = json.loads(self.body or b"null")
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}

    def show(self) -> str:
        return f"{self.status or 'nothing'} {self.body[:200]!r}"


def call(base: str, method: str, path: str, body: bytes | None = None) -> Answer:
    """One request; status 0 when nothing answered."""
    request = urllib.request.Request(base + path, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Answer(int(response.status), response.headers.get_content_type(), response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.headers.get_content_type(), exc.read())
    except OSError as exc:
        return Answer(0, "", str(exc).encode())


def _put(base: str, user: str, date_of_birth: str) -> Answer:
    return call(base, "PUT", f"/hello/{user}", json.dumps({"dateOfBirth": date_of_birth}).encode())


def wait_ready(base: str, attempts: int, interval: float) -> str | None:
    """None once /readyz answers 200; otherwise why not."""
    for attempt in range(1, attempts + 1):
        answer = call(base, "GET", "/readyz")
        if answer.status == 200:
            return None
        print(
            f"smoke: /readyz answered {answer.status or 'nothing'} (attempt {attempt} of {attempts})",
            file=sys.stderr,
        )
        if attempt < attempts:
            time.sleep(interval)
    return "/readyz never answered 200"


def _greeting_fault(user: str, answer: Answer) -> str | None:
    if answer.status != 200 or answer.content_type != "application/json":
        return f"expected 200 application/json, got {answer.content_type or '-'} {answer.show()}"
    message = str(answer.document().get("message", ""))
    if message == f"Hello, {user}! Happy birthday!":
        return None
    match = re.fullmatch(rf"Hello, {re.escape(user)}! Your birthday is in (\d+) day\(s\)", message)
    if match is None or not 1 <= int(match.group(1)) <= 366:
        return f"unexpected message {message!r}"
    return None


def _problem_fault(expected: int, answer: Answer) -> str | None:
    if answer.status != expected or answer.content_type != PROBLEM_JSON:
        return f"expected {expected} {PROBLEM_JSON}, got {answer.content_type or '-'} {answer.show()}"
    if answer.document().get("status") != expected:
        return f"the problem document does not say status {expected}: {answer.show()}"
    return None


def contract_cases(base: str, user: str, rng: random.Random) -> list[tuple[str, Callable[[], str | None]]]:
    """The cases, in the order they must run (the GETs read what the first PUT wrote)."""
    unknown = "Smokeunknown" + "".join(rng.choices(string.ascii_letters, k=20))
    future = f"{datetime.now(UTC).year + 1}-01-01"

    def put_ok() -> str | None:
        answer = _put(base, user, DATE_OF_BIRTH)
        return None if answer.status == 204 else f"expected 204, got {answer.show()}"

    def bad_date_changes_nothing() -> str | None:
        fault = _problem_fault(400, _put(base, user, future))
        return fault or greeting()

    def greeting() -> str | None:
        return _greeting_fault(user, call(base, "GET", f"/hello/{user}"))

    def unknown_user() -> str | None:
        return _problem_fault(404, call(base, "GET", f"/hello/{unknown}"))

    return [
        (f"PUT /hello/{user} {DATE_OF_BIRTH} -> 204", put_ok),
        (f"GET /hello/{user} -> 200 greeting", greeting),
        (f"GET /hello/{unknown} (never stored) -> 404", unknown_user),
        ("PUT /hello/Bad1Name -> 400", lambda: _problem_fault(400, _put(base, "Bad1Name", DATE_OF_BIRTH))),
        ("GET /hello/Bad1Name -> 400", lambda: _problem_fault(400, call(base, "GET", "/hello/Bad1Name"))),
        (f"PUT /hello/{user} {future} (future) -> 400, nothing changed", bad_date_changes_nothing),
    ]


def smoke_check(base: str, user: str, attempts: int, interval: float, rng: random.Random) -> list[str]:
    """The failures, one line each; empty when the service is ready and every case holds."""
    not_ready = wait_ready(base, attempts, interval)
    if not_ready:
        return [not_ready]
    print("smoke: ok   GET /readyz -> 200", file=sys.stderr)
    failures = []
    for name, case in contract_cases(base, user, rng):
        fault = case()
        if fault is None:
            print(f"smoke: ok   {name}", file=sys.stderr)
        else:
            print(f"smoke: FAIL {name}: {fault}", file=sys.stderr)
            failures.append(f"{name}: {fault}")
    return failures


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: smoke_check.py BASE_URL USER ATTEMPTS INTERVAL_SECONDS", file=sys.stderr)
        return 2
    base, user = argv[0].rstrip("/"), argv[1]
    if not re.fullmatch(r"[A-Za-z]{1,64}", user):
        print(f"smoke: USER must be 1 to 64 ASCII letters, not {user!r}", file=sys.stderr)
        return 2
    failures = smoke_check(base, user, int(argv[2]), float(argv[3]), random.Random())
    if failures:
        print(f"smoke: {base} failed {len(failures)} check(s): {'; '.join(failures)}", file=sys.stderr)
        return 1
    print(f"smoke: {base} is ready and answers every contract case", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
