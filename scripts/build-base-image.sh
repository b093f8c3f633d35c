#!/usr/bin/env bash
# Builds a local stand-in for the Dockerfile's default base image (python:3.12-slim) from Debian's own
# packages, for machines that reach Debian's mirror but no container registry:
#
#   scripts/build-base-image.sh                 # -> local/python:bookworm (Python 3.11)
#   docker build --build-arg BASE_IMAGE=local/python:bookworm -t hello-birthday .
#
# The image is kept: a second run does nothing unless REBUILD=1. The host's extra CA certificates
# (/usr/local/share/ca-certificates/*.crt), if any, are trusted inside this local base only, so that
# pip inside `docker build` reaches the package index the way the host does; the production image
# is built on python:3.12-slim and never sees them.
set -euo pipefail

image="${1:-local/python:bookworm}"
suite="${SUITE:-bookworm}"

if [[ "${REBUILD:-0}" != 1 ]] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "build-base-image: $image exists (REBUILD=1 to build it again)"
    exit 0
fi

for tool in mmdebstrap docker; do
    command -v "$tool" >/dev/null || { echo "build-base-image: $tool is not installed" >&2; exit 1; }
done

started=$SECONDS
# minbase: essential packages and apt only; Python, venv, pip, CA roots and zone data on top.
# The customize hooks run with "$1" set to the new root file system (hence the single quotes).
# shellcheck disable=SC2016
mmdebstrap \
    --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,tzdata \
    --customize-hook='for crt in /usr/local/share/ca-certificates/*.crt; do
            if [ -f "$crt" ]; then cp "$crt" "$1/usr/local/share/ca-certificates/"; fi
        done
        chroot "$1" update-ca-certificates >/dev/null' \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$suite" - \
    | docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' \
        - "$image" >/dev/null

echo "build-base-image: built $image in $((SECONDS - started)) s"
