#!/usr/bin/env bash
# Restore a copy of the database from the replica, check it, and say what it holds.
#
#   REPLICA_URL=s3://bucket/path?endpoint=...&region=... scripts/restore.sh [-timestamp TIME] OUTPUT
#
# Without -timestamp: the latest replicated state. With -timestamp (RFC 3339, e.g.
# 2026-11-22T14:05:00Z): the state as of that time, within the snapshot retention (litestream.yml).
# OUTPUT must not exist yet; the live database is never touched. Credentials come from
# AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. Prints the restore time, the integrity check, the row
# count and the newest write (updated_at) with its age.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT

usage() {
    cat >&2 <<'EOF'
usage: REPLICA_URL=<s3://bucket/path?endpoint=...&region=...|file:///path> \
       scripts/restore.sh [-timestamp RFC3339-TIME] OUTPUT_FILE

  -timestamp TIME   restore the state as of TIME (e.g. 2026-11-22T14:05:00Z) instead of the latest
  OUTPUT_FILE       where to write the copy; must not exist
EOF
    exit 2
}
die() {
    printf 'restore.sh: error: %s\n' "$*" >&2
    exit 1
}

timestamp=""
output=""
while (($# > 0)); do
    case "$1" in
    -timestamp | --timestamp)
        (($# >= 2)) || usage
        timestamp="$2"
        shift 2
        ;;
    -h | -help | --help) usage ;;
    -*)
        printf 'restore.sh: unknown option %s\n' "$1" >&2
        usage
        ;;
    *)
        [[ -z "${output}" ]] || usage
        output="$1"
        shift
        ;;
    esac
done
[[ -n "${output}" ]] || usage

readonly RFC3339='^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$'
if [[ -n "${timestamp}" && ! "${timestamp}" =~ ${RFC3339} ]]; then
    die "-timestamp must be an RFC 3339 time such as 2026-11-22T14:05:00Z, not '${timestamp}'"
fi
if [[ -z "${REPLICA_URL:-}" ]]; then
    die "REPLICA_URL is not set: give s3://bucket/path?endpoint=...&region=... or file:///absolute/path"
fi
if [[ -e "${output}" || -e "${output}-wal" ]]; then
    die "${output} already exists: give a new file name (this script never overwrites a database)"
fi
mkdir -p -- "$(dirname -- "${output}")"

# The venv's python has pysqlite3 (SQLite 3.53); fall back to the one on PATH (the container's venv).
python="${ROOT}/.venv/bin/python"
[[ -x "${python}" ]] || python="$(command -v python || true)"
[[ -n "${python}" ]] || die "no python on PATH to check the copy"
"${python}" -c 'import pysqlite3' 2>/dev/null || die "${python} has no pysqlite3 (pip install -e .)"
litestream="$(command -v litestream || true)"
[[ -n "${litestream}" ]] || litestream="${ROOT}/.venv/bin/litestream"
[[ -x "${litestream}" ]] || die "litestream is not on PATH"

# Litestream 0.5.17's S3 client fails to start at all when AWS_CA_BUNDLE is set.
unset AWS_CA_BUNDLE

# The writer lease names the generation that holds the data (or that was written at -timestamp).
at=()
[[ -z "${timestamp}" ]] || at=(--at "${timestamp}")
source_url="$("${python}" -m service replica-url "${at[@]}")" || die "could not read the writer lease"
[[ "${source_url}" == "${REPLICA_URL}" ]] || echo "restoring from the lease's generation: ${source_url}" >&2

args=(restore -o "${output}" -integrity-check full)
[[ -z "${timestamp}" ]] || args+=(-timestamp "${timestamp}")
started_us=${EPOCHREALTIME/[.,]/}
if ! "${litestream}" "${args[@]}" "${source_url}"; then
    rm -f -- "${output}" "${output}.tmp"
    die "litestream could not restore from ${source_url}${timestamp:+ as of ${timestamp}} (its error is above)"
fi
elapsed_ms=$(((${EPOCHREALTIME/[.,]/} - started_us) / 1000))

"${python}" - "${output}" "${elapsed_ms}" <<'EOF'
import sys
from datetime import UTC, datetime

import pysqlite3.dbapi2 as sqlite

path, elapsed_ms = sys.argv[1], int(sys.argv[2])
connection = sqlite.connect(f"file:{path}?mode=ro", uri=True)
try:
    integrity = [row[0] for row in connection.execute("PRAGMA integrity_check")]
    if integrity != ["ok"]:
        sys.exit(f"restore.sh: error: {path} failed the integrity check: {'; '.join(integrity[:5])}")
    rows, newest = connection.execute("SELECT count(*), max(updated_at) FROM users").fetchone()
finally:
    connection.close()
print(f"restored: {path} in {elapsed_ms} ms")
print("integrity: ok")
print(f"rows: {rows}")
if newest is None:
    print("newest write: none (no users)")
else:
    age = datetime.now(UTC) - datetime.fromisoformat(newest)
    print(f"newest write: {newest} ({age.total_seconds():.0f} s ago)")
EOF
