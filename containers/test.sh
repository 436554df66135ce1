#!/usr/bin/env bash
# `make test-containers`: the stack as one container per service, tested from the host.
# Installs Docker's engine, compose and debootstrap from Debian's packages when missing, starts
# dockerd when none runs (and stops it after), builds the images (containers/images.sh) and runs
# tests/containers with the project's virtualenv. Needs root, as make images does.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
log() { printf 'test-containers: %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
started=$(now)

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
{ docker compose version || command -v docker-compose; } >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { log "installing ${missing[*]} needs root"; exit 2; }
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

containers/dockerd.sh start
trap 'containers/dockerd.sh stop' EXIT
images_started=$(now)
containers/images.sh
log "images ready in $(since "$images_started") s"

SUITE=${SUITE:-$(. /etc/os-release && echo "$VERSION_CODENAME")}
export GATEWAY_IMAGE=${GATEWAY_IMAGE:-voice-gateway:latest}
export REDIS_IMAGE=${REDIS_IMAGE:-voice-gateway-redis:$SUITE}
tests_started=$(now)
status=0
"$PY" -m pytest -q -m containers tests/containers "$@" || status=$?
log "tests ran in $(since "$tests_started") s; figures:"
cat build/containers/figures.json >&2 2>/dev/null || true
log "make test-containers took $(since "$started") s"
exit $status
