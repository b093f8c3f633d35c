#!/usr/bin/env bash
# The production entrypoint (the container runs it; `make run` runs it on this machine).
#
# It checks that the tools are on PATH, then execs the supervisor, `python -m service supervise`,
# which reads and checks every setting (service/settings.py: StackSettings and Config) and does the
# rest (service/stack/boot.py, then serving.py): lock the volume, take the writer lease on the replica path,
# place the local database against the replica (keep it, or set it aside and restore the replica's
# latest), migrate, start Litestream, wait for its first sync, start gunicorn, and stop the two in
# order on SIGTERM. Settings: the README's Settings table, or `python -m service supervise --help`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT

if (($# > 0)); then
    echo "usage: scripts/start.sh   (settings come from the environment: python -m service supervise --help)" >&2
    exit 2
fi

for tool in python litestream gunicorn; do
    if ! command -v "${tool}" >/dev/null; then
        printf '{"level": "error", "logger": "start.sh", "message": "%s is not on PATH"}\n' "${tool}" >&2
        exit 1
    fi
done

# Relative paths in the settings (DATABASE_PATH) stay relative to the folder this was started from.
exec python -m service supervise "${ROOT}"
