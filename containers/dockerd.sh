#!/usr/bin/env bash
# A Docker engine for `make test-containers` on a machine without a running one.
#   containers/dockerd.sh start   uses the engine that answers, or starts dockerd and records it
#   containers/dockerd.sh stop    stops dockerd only if `start` started it
# The engine it starts: vfs storage (works on any file system, no kernel overlay needed),
# --iptables=false (the machine's firewall is left alone) and --ip-forward=false (the host never
# routes a container's packets off this machine). Containers reach each other by name on a
# compose network (a bridge); the host reaches them through ports published on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
STATE=${DOCKERD_STATE:-build/containers/dockerd}
log() { printf 'dockerd: %s\n' "$*" >&2; }

start() {
    if $DOCKER info >/dev/null 2>&1; then
        log "using the Docker engine that answers ($($DOCKER info -f '{{.ServerVersion}} {{.Driver}}'))"
        return
    fi
    command -v dockerd >/dev/null || { log "dockerd is not installed (apt-get install docker.io)"; exit 2; }
    [ "$(id -u)" = 0 ] || { log "starting dockerd needs root"; exit 2; }
    mkdir -p "$STATE"
    setsid dockerd --storage-driver=vfs --iptables=false --ip-forward=false \
        --pidfile "$STATE/dockerd.pid" >"$STATE/dockerd.log" 2>&1 </dev/null &
    echo $! >"$STATE/started.pid"
    for _ in $(seq 1 300); do
        if $DOCKER info >/dev/null 2>&1; then
            log "started dockerd (pid $(cat "$STATE/started.pid"), log $STATE/dockerd.log)"
            return
        fi
        if ! kill -0 "$(cat "$STATE/started.pid")" 2>/dev/null; then
            tail -20 "$STATE/dockerd.log" >&2
            rm -f "$STATE/started.pid"
            log "dockerd exited at start"
            exit 1
        fi
        sleep 0.1
    done
    log "dockerd did not answer within 30 s"
    exit 1
}

stop() {
    [ -f "$STATE/started.pid" ] || return 0
    local pid
    pid=$(cat "$STATE/started.pid")
    rm -f "$STATE/started.pid"
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid"
    # dockerd stops its containers (10 s each at most) and its containerd, then exits.
    for _ in $(seq 1 600); do
        kill -0 "$pid" 2>/dev/null || { log "stopped dockerd (pid $pid)"; return 0; }
        sleep 0.1
    done
    log "dockerd (pid $pid) did not stop within 60 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
