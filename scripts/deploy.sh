#!/usr/bin/env bash
# Deploy to Fly.io with a safety net: preflight, rolling deploy, smoke check, automatic roll back.
#
#   scripts/deploy.sh [--app NAME] [--config fly.toml] [--url https://NAME.fly.dev] [--skip-tests]
#                     [--image REF]
#
# The steps, the options and the environment it reads: scripts/deploy.py (or --help). This checks
# that its tools are there and runs it from the checkout's root.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v python3 >/dev/null || {
    echo "deploy: python3 is not on PATH" >&2
    exit 1
}
exec python3 -m scripts.deploy "$@"
