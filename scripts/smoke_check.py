"""The smoke check ``scripts/deploy.sh`` runs against the public URL after a deploy or a roll back.

    python3 scripts/smoke_check.py BASE_URL USER ATTEMPTS INTERVAL_SECONDS

Exits 0 when /readyz answers 200 within ATTEMPTS tries, INTERVAL seconds apart, and then a PUT and a
GET of /hello/USER round-trip; otherwise exits 1 with the reason. Standard library only (urllib), so
that nothing beyond python3 is needed beside flyctl.
"""

import json
import sys
import time
import urllib.error
import urllib.request


def call(base: str, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """The status and body of one request; status 0 when nothing answered."""
    request = urllib.request.Request(base + path, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status: int = response.status
            return status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError as exc:
        return 0, str(exc).encode()


def smoke_check(base: str, user: str, attempts: int, interval: float) -> str | None:
    """None when the service is ready and round-trips a write; otherwise why not."""
    for attempt in range(1, attempts + 1):
        status, _ = call(base, "GET", "/readyz")
        if status == 200:
            break
        print(
            f"smoke: /readyz answered {status or 'nothing'} (attempt {attempt} of {attempts})",
            file=sys.stderr,
        )
        if attempt < attempts:
            time.sleep(interval)
    else:
        return "smoke: /readyz never answered 200"

    status, body = call(base, "PUT", f"/hello/{user}", json.dumps({"dateOfBirth": "2000-02-29"}).encode())
    if status != 204:
        return f"smoke: PUT /hello/{user} answered {status}: {body[:200]!r}"
    status, body = call(base, "GET", f"/hello/{user}")
    if status != 200 or user not in json.loads(body or b"{}").get("message", ""):
        return f"smoke: GET /hello/{user} answered {status}: {body[:200]!r}"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: smoke_check.py BASE_URL USER ATTEMPTS INTERVAL_SECONDS", file=sys.stderr)
        return 2
    base, user = argv[0], argv[1]
    failure = smoke_check(base, user, int(argv[2]), float(argv[3]))
    if failure:
        print(failure, file=sys.stderr)
        return 1
    print(f"smoke: {base} is ready and round-trips PUT/GET /hello/{user}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
