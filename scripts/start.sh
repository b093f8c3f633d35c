#!/usr/bin/env bash
# The production entrypoint (the container runs it; `make run` runs it on this machine).
#
# It checks the settings it can check without Python (stopping with a message that names the
# variable), then execs the supervisor, `python -m service supervise`, which does the rest in Python
# (service/stack/supervisor.py): lock the volume, take the writer lease on the replica path, place the local
# database against the replica (keep it, or set it aside and restore the replica's latest), migrate,
# start Litestream, wait for its first sync, start gunicorn, and stop the two in order on SIGTERM.
#
# Settings (environment): REPLICA_URL (required), AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (for
# s3:// replicas), DATABASE_PATH (default data/hello.db, relative to the current directory),
# LITESTREAM_METRICS_ADDR (default 127.0.0.1:9090), LITESTREAM_SOCKET (default a file in $TMPDIR),
# RESTORE_TIMEOUT (seconds, default 300), LITESTREAM_READY_TIMEOUT (seconds, default 30),
# WRITER_LEASE_TTL (seconds, default 30), and the service's own settings (service/settings.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT

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

if (($# > 0)); then
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
export RESTORE_TIMEOUT

cd "${ROOT}"
exec python -m service supervise "${ROOT}"
