#!/usr/bin/env bash
# Installs the operating-system tools that `make test` needs, from the distribution's packages
# (Debian or Ubuntu), and only those that are missing:
#
#   promtool    (package prometheus)  the alert rules' checks and unit tests
#   haproxy                           the zero-downtime drill's load balancer
#   initdb      (package postgresql)  the PostgreSQL profile's tests start their own server
#   make
#   dockerd     (package docker.io)   the container drill, only where no Docker engine answers
#   mmdebstrap                        the container drill's local base image (scripts/build-base-image.sh),
#                                     only where CONTAINER_BASE_IMAGE names no base image to pull
#
# Both `.ci/run` and `.github/workflows/test.yml` call it. As root it runs apt-get itself; as any other
# user (GitHub's runner) through `sudo -n`. Package scripts may not start daemons while it installs
# (a policy-rc.d that answers 101 for the duration): the tests start their own servers on free
# loopback ports, and a system-wide Prometheus on :9090 or HAProxy is nobody's business here.
# Exits non-zero, with the reason, when something is missing and cannot be installed.
set -euo pipefail

log() { printf 'install-test-tools: %s\n' "$*" >&2; }

missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v make >/dev/null || missing+=(make)
docker info >/dev/null 2>&1 || command -v dockerd >/dev/null || missing+=(docker.io)
if [[ -z "${CONTAINER_BASE_IMAGE:-}" ]]; then
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
fi

if ((${#missing[@]} == 0)); then
    log "every tool is installed already"
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    log "missing ${missing[*]}, and this user is not root and has no passwordless sudo"
    log "install them by hand: apt-get install --no-install-recommends ${missing[*]}"
    exit 1
fi

policy=/usr/sbin/policy-rc.d
placed_policy=0
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\n# install-test-tools.sh: no daemon starts while it installs\nexit 101\n' \
        | "${as_root[@]}" tee "$policy" >/dev/null
    "${as_root[@]}" chmod 0755 "$policy"
    placed_policy=1
fi
remove_policy() {
    if ((placed_policy)); then
        "${as_root[@]}" rm -f "$policy"
    fi
}
trap remove_policy EXIT

log "installing ${missing[*]}"
apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300)
"${apt[@]}" -qq update
"${apt[@]}" -y -qq install --no-install-recommends "${missing[@]}" >/dev/null
log "installed ${missing[*]}"
