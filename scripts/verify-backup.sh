#!/usr/bin/env bash
# Prove that the backup works: write a sentinel through the service, wait until the replica holds it,
# restore it, check it. The logic is in scripts/verify_backup.py (its docstring has the details).
#
#   REPLICA_URL=s3://BUCKET/hello.db?endpoint=...&region=... AWS_ACCESS_KEY_ID=... \
#   AWS_SECRET_ACCESS_KEY=... [HEARTBEAT_URL=https://...] scripts/verify-backup.sh --url BASE_URL
#
# Exits 0 when every check holds (and pings HEARTBEAT_URL when set), 1 when one fails, 2 on bad
# settings; the last line says why. Needs the project installed (pysqlite3, the litestream binary):
# the repository's .venv when there is one, else the python on PATH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${ROOT}/.venv/bin/python"
[[ -x "${python}" ]] || python="$(command -v python3 || command -v python)"
exec "${python}" "${ROOT}/scripts/verify_backup.py" "$@"
