#!/usr/bin/env bash
# `make images`: the gateway's images on a machine that reaches Debian's packages and PyPI but no
# container registry. It makes
#   voice-gateway-base:SUITE   Debian SUITE (debootstrap --variant=minbase) with python3, its venv
#                              module (pip comes with it) and CA certificates, `docker import`ed;
#   voice-gateway-redis:SUITE  Debian SUITE with Debian's redis-server, the same way;
#   voice-gateway:latest       the Dockerfile, built FROM the base with `docker build --network
#                              host` (pip inside the build reaches the package index as the host does).
# SUITE is the release this machine runs (/etc/os-release), or SUITE=... .
#
# Cached: each imported image carries a label with the hash of its recipe (suite, mirror, packages,
# RECIPE), and is made again only when that changes (or REFRESH=1, e.g. for new security updates);
# the gateway image rides on Docker's build cache. A second run that changed nothing takes seconds.
# Needs root (debootstrap, chroot) and a running Docker engine; prints each image's size and time.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
SUITE=${SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:?/etc/os-release names no release}")}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
BASE_IMAGE=${BASE_IMAGE:-voice-gateway-base:$SUITE}
REDIS_IMAGE=${REDIS_IMAGE:-voice-gateway-redis:$SUITE}
GATEWAY_IMAGE=${GATEWAY_IMAGE:-voice-gateway:latest}
WORK=${WORK:-build/containers}
# Bump RECIPE when the way a rootfs is made changes (the trimming below, the sources).
RECIPE=2
BASE_PACKAGES=python3,python3-venv,ca-certificates
REDIS_PACKAGES=redis-server
LABEL=org.voice-gateway.recipe

log() { printf 'images: %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[ "$(id -u)" = 0 ] || { log "debootstrap and chroot need root: run as root (sudo make images)"; exit 2; }
command -v debootstrap >/dev/null || { log "debootstrap is missing (apt-get install debootstrap)"; exit 2; }
$DOCKER info >/dev/null 2>&1 || { log "no Docker engine answers ($DOCKER info failed)"; exit 2; }

recipe_hash() {  # what an imported image is made from; its label
    printf '%s\n' "$RECIPE" "$SUITE" "$MIRROR" "$SECURITY_MIRROR" "$1" | sha256sum | cut -c1-16
}

image_label() {
    $DOCKER image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true
}

# A trimmed Debian root file system with PACKAGES, imported as TAG with the given --change lines.
make_rootfs_image() {
    local tag=$1 packages=$2
    shift 2
    local hash root started
    hash=$(recipe_hash "$packages")
    if [ "${REFRESH:-0}" != 1 ] && [ "$(image_label "$tag")" = "$hash" ]; then
        log "$tag: up to date (recipe $hash)"
        return
    fi
    started=$(now)
    root="$WORK/rootfs-${tag//[:\/]/-}"
    rm -rf "$root"
    mkdir -p "$WORK/debs"
    log "$tag: debootstrap $SUITE with $packages (log: $root.log)"
    # The package cache is shared by both images and kept, so a rebuild downloads only what changed.
    if ! debootstrap --variant=minbase --include="$packages" --cache-dir="$(realpath "$WORK/debs")" \
        "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1; then
        tail -20 "$root.log" >&2
        exit 1
    fi
    # Security and point-release updates, as a registry's base image has them.
    cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    if ! { chroot "$root" apt-get update -qq && DEBIAN_FRONTEND=noninteractive chroot "$root" \
        apt-get -y -qq -o Dpkg::Options::=--force-confold upgrade; } >>"$root.log" 2>&1; then
        tail -20 "$root.log" >&2
        exit 1
    fi
    # What a running service never reads: package lists and archives, manuals, translations
    # (the copyright files stay); later installs in derived images skip them too, as Debian's
    # slim images do.
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/debconf/*-old "$root"/var/log/*.log \
        "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
        "$root"/usr/share/lintian "$root"/tmp/* "$root"/root/.cache
    find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    cat >"$root/etc/dpkg/dpkg.cfg.d/excludes" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    : >"$root/etc/resolv.conf"  # Docker mounts its own at run time
    : >"$root/etc/machine-id"
    tar --numeric-owner -C "$root" -c . | $DOCKER import \
        --change "LABEL $LABEL=$hash" \
        --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "ENV LANG=C.UTF-8" \
        "$@" - "$tag" >/dev/null
    rm -rf "$root"
    log "$tag: made in $(since "$started") s"
}

# The host's package index, when pip here is told to use another one than PyPI and the build can
# reach it too (http or https, through the host's network). Never one with credentials in it: a
# build argument is visible in the build stage's history. A file:// index on the host is not
# visible inside the build; PyPI (the default) is then used.
pip_index_args() {
    local index
    index=${PIP_INDEX_URL:-$(python3 -m pip config get global.index-url 2>/dev/null || true)}
    case $index in
        http://*@* | https://*@*) log "not passing the host's pip index (it holds credentials)" ;;
        http://* | https://*) printf -- '--build-arg\nPIP_INDEX_URL=%s\n' "$index" ;;
        "") ;;
        *) log "the host's pip index $index is not reachable from a build; using PyPI" ;;
    esac
}

started_all=$(now)
make_rootfs_image "$BASE_IMAGE" "$BASE_PACKAGES" --change 'CMD ["python3"]'
make_rootfs_image "$REDIS_IMAGE" "$REDIS_PACKAGES" \
    --change "USER redis" --change "WORKDIR /var/lib/redis" --change "EXPOSE 6379" \
    --change 'CMD ["redis-server", "--protected-mode", "no"]'

# The host's local CAs, for a network that inspects TLS (containers/build-ca/README.md); copied
# only when they differ, so that Docker's build cache holds.
for ca in /usr/local/share/ca-certificates/*.crt; do
    [ -f "$ca" ] || continue
    cmp -s "$ca" "containers/build-ca/${ca##*/}" || cp "$ca" containers/build-ca/
done
for ca in containers/build-ca/*.crt; do
    if [ -f "$ca" ] && [ ! -f "/usr/local/share/ca-certificates/${ca##*/}" ]; then rm -f "$ca"; fi
done

started=$(now)
mapfile -t index_args < <(pip_index_args)
log "$GATEWAY_IMAGE: docker build FROM $BASE_IMAGE"
mkdir -p "$WORK"
# The classic builder: Debian's engine has BuildKit, but a newer client wants the buildx plugin
# for it, which Debian does not package; the classic builder does all this Dockerfile needs.
if ! DOCKER_BUILDKIT=0 $DOCKER build --force-rm --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    "${index_args[@]}" -t "$GATEWAY_IMAGE" . >"$WORK/build.log" 2>&1; then
    tail -30 "$WORK/build.log" >&2
    exit 1
fi
log "$GATEWAY_IMAGE: built in $(since "$started") s"

for image in "$BASE_IMAGE" "$REDIS_IMAGE" "$GATEWAY_IMAGE"; do
    size=$($DOCKER image inspect -f '{{.Size}}' "$image")
    log "$(awk -v i="$image" -v s="$size" 'BEGIN { printf "%-28s %4.0f MB", i, s / 1e6 }')"
done
log "all images ready in $(since "$started_all") s"
