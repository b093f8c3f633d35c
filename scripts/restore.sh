#!/usr/bin/env bash
# Restore a copy of the database from the replica, check it, and say what it holds.
#
#   REPLICA_URL=s3://bucket/path?endpoint=...&region=... scripts/restore.sh [-timestamp TIME] OUTPUT
#
# Without -timestamp: the latest replicated state. With -timestamp (RFC 3339, e.g.
# 2026-11-22T14:05:00Z): the state as of that time, within the snapshot retention (litestream.yml).
# OUTPUT must not exist yet; the live database is never touched. Credentials come from
# AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. The work is `python -m service restore`
# (service/commands/restore.py); this checks that its tools are there and runs it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT

# The checkout's venv first (pysqlite3, litestream), else what is on PATH (the container's venv).
[[ ! -d "${ROOT}/.venv/bin" ]] || PATH="${ROOT}/.venv/bin:${PATH}"
for tool in python litestream; do
    command -v "${tool}" >/dev/null || {
        echo "restore.sh: error: ${tool} is not on PATH (make .venv/.installed-run)" >&2
        exit 1
    }
done
exec python -m service restore "$@"
