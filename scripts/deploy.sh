#!/usr/bin/env bash
# Deploy to Fly.io with a safety net: preflight, rolling deploy, smoke check, automatic roll back.
#
#   scripts/deploy.sh [--app NAME] [--config fly.toml] [--url https://NAME.fly.dev] [--skip-tests]
#                     [--image REF]
#
# 1. Preflight: `make test` (unless --skip-tests, for CI where the test job already ran), `fly config
#    validate`, and the secrets the service cannot start without (REPLICA_URL, AWS_ACCESS_KEY_ID,
#    AWS_SECRET_ACCESS_KEY) present in `fly secrets list`, and at most one Machine that is not
#    destroyed in `fly machine list` (one SQLite writer per replica path; a stopped Machine counts).
#    Any failure stops before deploying.
# 2. Remember the image now running (the newest complete release in `fly releases --json`).
# 3. `fly deploy --strategy rolling --ha=false`, of --image REF when given (the pipeline builds one
#    image and deploys it to staging, then to production), else built from this checkout: the Machine
#    stops, starts on the new image with the same volume, and flyctl waits for the /readyz service
#    check. --ha=false: a first deploy creates one Machine, never a second "for availability".
# 4. Smoke and contract check through the public URL (scripts/smoke_check.py): /readyz answers 200,
#    PUT 204, GET greeting, 404 for an unknown user, 400 for a bad name and for a future date.
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
image=""
fly="${FLY:-fly}"
make_cmd="${MAKE:-make}"
attempts="${SMOKE_ATTEMPTS:-30}"
interval="${SMOKE_INTERVAL:-5}"

usage() {
    # The comment at the top of this file, up to its first line that is not a comment.
    sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
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
        --image) image="${2:?--image needs an image reference}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# Reads fly.toml and flyctl's JSON, and decides on it: scripts/fly_checks.py says how.
fly_checks() {
    python3 scripts/fly_checks.py "$@"
}

[[ -f "$config" ]] || die "no $config here"
if [[ -z "$app" ]]; then
    app="$(fly_checks app-name "$config")" || die "cannot read the app's name from $config: give --app"
fi
url="${url:-https://$app.fly.dev}"
url="${url%/}"
fly_app=(--app "$app" --config "$config")

# Succeeds when /readyz answers 200 within the attempts, then when every contract case holds
# (scripts/smoke_check.py).
smoke_check() {
    python3 scripts/smoke_check.py "$1" "$SMOKE_USER" "$attempts" "$interval"
}

roll_back() {
    local previous="$1" reason="$2"
    if [[ -z "$previous" ]]; then
        die "$reason, and there is no earlier image to roll back to: investigate with '$fly logs --app $app'"
    fi
    log "$reason: rolling back to $previous"
    if ! "$fly" deploy "${fly_app[@]}" --image "$previous" --strategy rolling --ha=false; then
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
missing="$(fly_checks missing-secrets "${REQUIRED_SECRETS[@]}" <<<"$secrets_json")" \
    || die "cannot read the secrets of $app: not deploying"
if [[ -n "$missing" ]]; then
    die "secrets missing on $app: $missing (fly secrets set --stage NAME=...; see docs/runbook.md): not deploying"
fi

# One writer per replica path: two Machines, each on its own volume, would both replicate to it.
log "preflight: $fly machine list"
machines_json="$("$fly" machine list "${fly_app[@]}" --json)" || die "cannot list the machines of $app: not deploying"
verdict="$(fly_checks one-machine "$app" <<<"$machines_json")" && status=0 || status=$?
if [[ $status -eq 1 ]]; then
    die "$verdict"
elif [[ $status -ne 0 ]]; then
    die "cannot read the machines of $app: not deploying"
fi
log "$verdict"

# 2. The image to roll back to.
releases_json="$("$fly" releases "${fly_app[@]}" --json)" || die "cannot list the releases of $app"
previous="$(fly_checks current-image <<<"$releases_json")" || die "cannot read the releases of $app"
log "running now: ${previous:-nothing (first deploy)}"

# 3. Deploy.
if [[ -n "$image" ]]; then
    source_args=(--image "$image")
else
    source_args=(--remote-only)
fi
log "deploying $app (rolling): ${image:-built from this checkout}"
if ! "$fly" deploy "${fly_app[@]}" --strategy rolling --ha=false "${source_args[@]}"; then
    roll_back "$previous" "fly deploy failed"
fi
deployed="$("$fly" releases "${fly_app[@]}" --json | fly_checks current-image || true)"
log "deployed: ${deployed:-unknown image}"

# 4. Smoke check; 5. roll back when it fails.
if ! smoke_check "$url"; then
    roll_back "$previous" "smoke check against $url failed"
fi
log "done: $app runs ${deployed:-the new image}"
