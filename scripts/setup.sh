#!/usr/bin/env bash
# Provision an environment on Fly.io; safe to run again. The logic is in scripts/fly_setup.py.
#
#   scripts/setup.sh [--dry-run] staging|production
#
# Looks up, then creates only what is missing: the app (production: fly.toml's app; staging: that name
# plus -staging), its volume, its object-storage bucket (with the credentials as app secrets), and
# REPLICA_URL (plus LITESTREAM_HEARTBEAT_URL when set here) as staged secrets. Prints each step and
# what it found already there. --dry-run prints the commands that would change something instead of
# running them. Environment: FLY (the flyctl command, default fly), FLY_ORG (default personal).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/fly_setup.py "$@"
