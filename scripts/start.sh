#!/usr/bin/env bash
# The production entrypoint (the container runs it; `make run` runs it on this machine).
#
#   1. Check the settings; stop with a message naming the variable when one is wrong.
#   2. When the database file is missing (fresh volume, lost machine): remove stale -wal/-shm files and
#      Litestream's folder beside it, then restore from the replica. No backup yet is fine (first boot);
#      any other failure stops start-up: never start empty over a replica that may hold the data.
#   3. Apply the migrations, so that the file exists before Litestream follows it.
#   4. exec Litestream, which runs `start.sh serve` as its child: that waits until Litestream has taken
#      over the database (its first sync), then execs gunicorn. No write is accepted before that.
#
# On SIGTERM Litestream forwards the signal to gunicorn, waits for it to exit (0 on a graceful stop),
# then makes its final sync.
#
# Settings (environment): REPLICA_URL (required), AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (for
# s3:// replicas), DATABASE_PATH (default data/hello.db, relative to the current directory),
# LITESTREAM_METRICS_ADDR (default 127.0.0.1:9090), LITESTREAM_SOCKET (default a file in $TMPDIR),
# RESTORE_TIMEOUT (seconds, default 300), LITESTREAM_READY_TIMEOUT (seconds, default 30), and the
# service's own settings (service/settings.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly SELF="${ROOT}/scripts/start.sh"
readonly CONFIG="${ROOT}/litestream.yml"

log() { printf 'start.sh: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# A whole number of seconds from 1 to 3600, or stop naming the variable.
seconds_setting() {
    local name="$1" value="$2"
    if [[ ! "${value}" =~ ^[0-9]+$ ]] || ((10#${value} < 1 || 10#${value} > 3600)); then
        die "${name} must be a whole number of seconds from 1 to 3600, not '${value}'"
    fi
}

# Litestream's first sync is what makes it follow the database: until then, writes would not be
# replicated if the stack stopped (Litestream skips its final sync for an uninitialised database).
# `litestream list` shows last_sync_at after the first upload to the replica. With the store
# unreachable at boot Litestream does not take the database over at all (its control socket does
# not even answer `list`), so start-up fails after LITESTREAM_READY_TIMEOUT rather than serving.
litestream_synced() {
    litestream list -json -socket "${LITESTREAM_SOCKET}" -timeout 2 2>/dev/null |
        python -c '
import json, sys
try:
    databases = json.load(sys.stdin).get("databases") or []
except ValueError:
    sys.exit(1)
sys.exit(0 if any(d.get("path") == sys.argv[1] and d.get("last_sync_at") for d in databases) else 1)
' "${DATABASE_PATH}"
}
wait_for_litestream() {
    local deadline=$((SECONDS + LITESTREAM_READY_TIMEOUT))
    until litestream_synced; do
        if ((SECONDS >= deadline)); then
            die "Litestream did not sync ${DATABASE_PATH} to REPLICA_URL within" \
                "${LITESTREAM_READY_TIMEOUT} s (LITESTREAM_READY_TIMEOUT): is the replica reachable?" \
                "Not serving writes that would not be replicated."
        fi
        sleep 0.1
    done
}

# `start.sh serve` is the command Litestream runs (-exec): wait for Litestream, then become gunicorn.
if [[ "${1:-}" == "serve" ]]; then
    : "${DATABASE_PATH:?set by start.sh}" "${LITESTREAM_SOCKET:?set by start.sh}"
    seconds_setting LITESTREAM_READY_TIMEOUT "${LITESTREAM_READY_TIMEOUT:-30}"
    LITESTREAM_READY_TIMEOUT="${LITESTREAM_READY_TIMEOUT:-30}"
    wait_for_litestream
    log "Litestream follows ${DATABASE_PATH}; starting gunicorn"
    cd "${ROOT}"
    exec gunicorn -c "${ROOT}/gunicorn.conf.py"
elif (($# > 0)); then
    echo "usage: scripts/start.sh   (settings come from the environment; see the top of this file)" >&2
    exit 2
fi

for tool in python litestream gunicorn; do
    command -v "${tool}" >/dev/null || die "'${tool}' is not on PATH (PATH=${PATH})"
done

# --- 1. Settings -----------------------------------------------------------------------------------
REPLICA_URL="${REPLICA_URL:-}"
if [[ -z "${REPLICA_URL}" ]]; then
    die "REPLICA_URL is not set: give s3://bucket/path?endpoint=https://...&region=... or" \
        "file:///absolute/path"
fi
if [[ "${REPLICA_URL}" =~ ^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^?]*)?(\?.*)?$ ]]; then
    if [[ -z "${AWS_ACCESS_KEY_ID:-${LITESTREAM_ACCESS_KEY_ID:-}}" ]]; then
        die "AWS_ACCESS_KEY_ID is not set (needed for the s3:// REPLICA_URL)"
    fi
    if [[ -z "${AWS_SECRET_ACCESS_KEY:-${LITESTREAM_SECRET_ACCESS_KEY:-}}" ]]; then
        die "AWS_SECRET_ACCESS_KEY is not set (needed for the s3:// REPLICA_URL)"
    fi
elif [[ ! "${REPLICA_URL}" =~ ^file:///[^?]+$ ]]; then
    die "REPLICA_URL must be s3://bucket/path?endpoint=...&region=... or file:///absolute/path," \
        "not '${REPLICA_URL}'"
fi
export REPLICA_URL

# Litestream 0.5.17's S3 client fails to start at all when AWS_CA_BUNDLE is set ("unable to add custom
# RootCAs HTTPClient"), whatever the endpoint. Litestream is the only AWS client here, so drop it; a
# private CA belongs in the system trust store instead.
if [[ -n "${AWS_CA_BUNDLE:-}" ]]; then
    log "ignoring AWS_CA_BUNDLE: Litestream cannot use it (put a private CA in the system trust store)"
    unset AWS_CA_BUNDLE
fi

RESTORE_TIMEOUT="${RESTORE_TIMEOUT:-300}"
seconds_setting RESTORE_TIMEOUT "${RESTORE_TIMEOUT}"
LITESTREAM_READY_TIMEOUT="${LITESTREAM_READY_TIMEOUT:-30}"
seconds_setting LITESTREAM_READY_TIMEOUT "${LITESTREAM_READY_TIMEOUT}"
export LITESTREAM_READY_TIMEOUT
export LITESTREAM_METRICS_ADDR="${LITESTREAM_METRICS_ADDR:-127.0.0.1:9090}"
export LITESTREAM_SOCKET="${LITESTREAM_SOCKET:-${TMPDIR:-/tmp}/hello-birthday-litestream.$$.sock}"
if ((${#LITESTREAM_SOCKET} > 100)); then
    die "LITESTREAM_SOCKET is too long for a unix socket path (${#LITESTREAM_SOCKET} > 100 characters)"
fi

# Litestream names databases by absolute path; resolve against the directory start.sh was run from.
DATABASE_PATH="${DATABASE_PATH:-data/hello.db}"
[[ "${DATABASE_PATH}" == /* ]] || DATABASE_PATH="${PWD}/${DATABASE_PATH}"
DATABASE_PATH="$(realpath -m -- "${DATABASE_PATH}")"
export DATABASE_PATH
readonly DATABASE_DIR="${DATABASE_PATH%/*}"
readonly DATABASE_NAME="${DATABASE_PATH##*/}"

cd "${ROOT}"
# The service's own checks (ports, time zone, log level...), with messages that name the variable.
python -c '
import sys
from service.settings import Config, ConfigError
try:
    Config.from_env()
except ConfigError as exc:
    sys.exit(f"start.sh: error: {exc}")
'

# --- 2. Restore on a fresh volume -------------------------------------------------------------------
mkdir -p -- "${DATABASE_DIR}"
# An empty file is what an interrupted first start leaves; migrating it would start a new database
# over the replica, so it counts as missing.
if [[ -f "${DATABASE_PATH}" && ! -s "${DATABASE_PATH}" ]]; then
    if [[ -s "${DATABASE_PATH}-wal" ]]; then
        die "${DATABASE_PATH} is empty but its -wal file is not: look at it by hand before starting"
    fi
    log "${DATABASE_PATH} is empty: treating it as missing"
    rm -f -- "${DATABASE_PATH}"
fi
if [[ ! -e "${DATABASE_PATH}" ]]; then
    # Leftovers of another database must not be applied to the restored one.
    rm -f -- "${DATABASE_PATH}-wal" "${DATABASE_PATH}-shm"
    rm -rf -- "${DATABASE_DIR}/.${DATABASE_NAME}-litestream"
    log "no database at ${DATABASE_PATH}: restoring from ${REPLICA_URL}"
    started_us=${EPOCHREALTIME/[.,]/}
    status=0
    # The S3 client retries an unreachable store for about two minutes; RESTORE_TIMEOUT bounds that.
    # --foreground keeps Litestream in this process group, so that stopping the group stops it too.
    timeout --foreground --kill-after=5 "${RESTORE_TIMEOUT}" \
        litestream restore -config "${CONFIG}" -if-replica-exists -integrity-check quick \
        "${DATABASE_PATH}" || status=$?
    if ((status != 0)); then
        rm -f -- "${DATABASE_PATH}" "${DATABASE_PATH}.tmp" "${DATABASE_PATH}-wal" "${DATABASE_PATH}-shm"
        if ((status == 124 || status == 137)); then
            die "restore from REPLICA_URL (${REPLICA_URL}) did not finish within ${RESTORE_TIMEOUT} s" \
                "(RESTORE_TIMEOUT): the replica may be unreachable. Not starting with an empty database."
        fi
        die "restore from REPLICA_URL (${REPLICA_URL}) failed (exit ${status}; Litestream's error is" \
            "above): wrong credentials, missing bucket or unreadable replica? Not starting with an" \
            "empty database over a replica that may hold the data."
    fi
    if [[ -e "${DATABASE_PATH}" ]]; then
        log "restored ${DATABASE_PATH} in $(((${EPOCHREALTIME/[.,]/} - started_us) / 1000)) ms"
    else
        log "no backup in the replica yet: starting a new database"
    fi
fi

# --- 3. Migrations ------------------------------------------------------------------------------------
python -m service migrate

# --- 4. Litestream, then gunicorn -------------------------------------------------------------------
log "starting Litestream (metrics on ${LITESTREAM_METRICS_ADDR}); gunicorn starts after its first sync"
exec litestream replicate -config "${CONFIG}" -exec "$(printf '%q' "${SELF}") serve"
