#!/usr/bin/env bash
# Deploy to Fly.io with a safety net: preflight, rolling deploy, smoke check, automatic roll back.
#
#   scripts/deploy.sh [--app NAME] [--config fly.toml] [--url https://NAME.fly.dev] [--skip-tests]
#
# 1. Preflight: `make test` (unless --skip-tests, for CI where the test job already ran), `fly config
#    validate`, and the secrets the service cannot start without (REPLICA_URL, AWS_ACCESS_KEY_ID,
#    AWS_SECRET_ACCESS_KEY) present in `fly secrets list`. Any failure stops before deploying.
# 2. Remember the image now running (the newest complete release in `fly releases --json`).
# 3. `fly deploy --strategy rolling`: the Machine stops, starts on the new image with the same volume,
#    and flyctl waits for the /readyz service check.
# 4. Smoke check through the public URL: /readyz answers 200, and a PUT then GET of /hello/<user>
#    round-trips.
# 5. If the deploy or the smoke check fails: `fly deploy --image <previous>`, check /readyz again,
#    and exit 1 either way so that CI shows red.
#
# Environment: FLY_APP (instead of --app), SMOKE_URL (instead of --url), SMOKE_ATTEMPTS (default 30)
# and SMOKE_INTERVAL (seconds, default 5) for how long /readyz may take, FLY (the flyctl command,
# default `fly`), MAKE (default `make`). FLY_API_TOKEN authenticates flyctl in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly REQUIRED_SECRETS=(REPLICA_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY)
readonly SMOKE_USER="Deploysmoke"

app="${FLY_APP:-}"
config="fly.toml"
url="${SMOKE_URL:-}"
run_tests=1
fly="${FLY:-fly}"
make_cmd="${MAKE:-make}"
attempts="${SMOKE_ATTEMPTS:-30}"
interval="${SMOKE_INTERVAL:-5}"

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
}

log() {
    printf 'deploy: %s\n' "$*" >&2
}

die() {
    log "$*"
    exit 1
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --app) app="${2:?--app needs a name}"; shift 2 ;;
        --config) config="${2:?--config needs a path}"; shift 2 ;;
        --url) url="${2:?--url needs a URL}"; shift 2 ;;
        --skip-tests) run_tests=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[[ -f "$config" ]] || die "no $config here"
if [[ -z "$app" ]]; then
    app="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["app"])' "$config")"
fi
url="${url:-https://$app.fly.dev}"
url="${url%/}"
fly_app=(--app "$app" --config "$config")

# Prints the image of the newest release that finished, from `fly releases --json` on stdin.
# flyctl prints fly-go's Release struct (Version, Status, ImageRef); keys are compared without case
# or underscores, so that image_ref would do too.
current_image() {
    python3 -c '
import json, sys
releases = [{k.lower().replace("_", ""): v for k, v in r.items()} for r in json.load(sys.stdin) or []]
done = [r for r in releases if str(r.get("status")).lower() in ("complete", "succeeded") and r.get("imageref")]
done.sort(key=lambda r: int(r.get("version") or 0), reverse=True)
print(done[0]["imageref"] if done else "")
'
}

# Succeeds when /readyz answers 200 within the attempts, then when a PUT and a GET of the smoke user
# round-trip. Uses Python's urllib, so that nothing beyond python3 is needed.
smoke_check() {
    python3 - "$1" "$SMOKE_USER" "$attempts" "$interval" <<'PY'
import json
import sys
import time
import urllib.error
import urllib.request

base, user, attempts, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])


def call(method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(base + path, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError as exc:
        return 0, str(exc).encode()


for attempt in range(1, attempts + 1):
    status, _ = call("GET", "/readyz")
    if status == 200:
        break
    print(f"smoke: /readyz answered {status or 'nothing'} (attempt {attempt} of {attempts})", file=sys.stderr)
    if attempt < attempts:
        time.sleep(interval)
else:
    sys.exit("smoke: /readyz never answered 200")

status, body = call("PUT", f"/hello/{user}", json.dumps({"dateOfBirth": "2000-02-29"}).encode())
if status != 204:
    sys.exit(f"smoke: PUT /hello/{user} answered {status}: {body[:200]!r}")
status, body = call("GET", f"/hello/{user}")
if status != 200 or user not in json.loads(body or b"{}").get("message", ""):
    sys.exit(f"smoke: GET /hello/{user} answered {status}: {body[:200]!r}")
print(f"smoke: {base} is ready and round-trips PUT/GET /hello/{user}", file=sys.stderr)
PY
}

roll_back() {
    local previous="$1" reason="$2"
    if [[ -z "$previous" ]]; then
        die "$reason, and there is no earlier image to roll back to: investigate with '$fly logs --app $app'"
    fi
    log "$reason: rolling back to $previous"
    if ! "$fly" deploy "${fly_app[@]}" --image "$previous" --strategy rolling; then
        die "ROLL BACK FAILED: run '$fly deploy --app $app --image $previous' by hand"
    fi
    if smoke_check "$url"; then
        log "rolled back to $previous, and it answers"
    else
        log "rolled back to $previous, but the smoke check still fails: see docs/runbook.md"
    fi
    exit 1
}

# 1. Preflight.
if [[ $run_tests -eq 1 ]]; then
    log "preflight: $make_cmd test"
    "$make_cmd" test || die "tests failed: not deploying"
else
    log "preflight: tests skipped (--skip-tests)"
fi
log "preflight: $fly config validate"
"$fly" config validate "${fly_app[@]}" >&2 || die "$config is not valid: not deploying"

secrets_json="$("$fly" secrets list "${fly_app[@]}" --json)" || die "cannot list the secrets of $app"
missing="$(python3 -c '
import json, sys
names = {s.get("Name", s.get("name")) for s in json.loads(sys.argv[1] or "[]")}
print(" ".join(n for n in sys.argv[2:] if n not in names))
' "$secrets_json" "${REQUIRED_SECRETS[@]}")"
if [[ -n "$missing" ]]; then
    die "secrets missing on $app: $missing (fly secrets set --stage NAME=...; see docs/runbook.md): not deploying"
fi

# 2. The image to roll back to.
previous="$("$fly" releases "${fly_app[@]}" --json | current_image)" || die "cannot list the releases of $app"
log "running now: ${previous:-nothing (first deploy)}"

# 3. Deploy.
log "deploying $app (rolling)"
if ! "$fly" deploy "${fly_app[@]}" --strategy rolling --remote-only; then
    roll_back "$previous" "fly deploy failed"
fi
deployed="$("$fly" releases "${fly_app[@]}" --json | current_image || true)"
log "deployed: ${deployed:-unknown image}"

# 4. Smoke check; 5. roll back when it fails.
if ! smoke_check "$url"; then
    roll_back "$previous" "smoke check against $url failed"
fi
log "done: $app runs ${deployed:-the new image}"
