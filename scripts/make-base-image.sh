#!/usr/bin/env bash
# Builds a local Debian bookworm + Python 3.11 base image WITHOUT pulling from a registry.
#
# On a machine that can reach Docker Hub you do not need this: the Dockerfiles default to
# `python:3.11-slim`. Where no registry is reachable (air-gapped CI, this project's build
# machine) this script makes an equivalent base from Debian packages with `debootstrap`
# and `docker import`s it, so the images can still be built:
#
#   sudo scripts/make-base-image.sh                       # -> histopath/base:bookworm-py311
#   docker build --network host --build-arg BASE_IMAGE=histopath/base:bookworm-py311 \
#       -f serving/docker/webapp.Dockerfile -t histopath/webapp .
#
# The image holds python3 (3.11), python3-venv and ca-certificates. The host's CA bundle
# and /etc/pip.conf are copied in so that `pip install` inside `docker build` reaches the
# same package index as the host (corporate proxies, private mirrors).
#
# Idempotent: does nothing when the image exists (FORCE=1 rebuilds it).
#
# Environment:
#   BASE_TAG      image to create              (default histopath/base:bookworm-py311)
#   DEBIAN_MIRROR Debian mirror URL            (default: the one in this host's apt sources)
#   SUITE         Debian suite                 (default bookworm: its python3 is 3.11)
#   WORK_DIR      scratch folder for the rootfs (default: a fresh mktemp dir, deleted after)
#   FORCE=1       rebuild even if the image exists
# Needs: root (debootstrap, chroot), debootstrap (apt-get install debootstrap), docker.
set -euo pipefail

BASE_TAG="${BASE_TAG:-histopath/base:bookworm-py311}"
SUITE="${SUITE:-bookworm}"
PACKAGES="python3,python3-venv,ca-certificates"

log() { echo "[make-base-image] $*" >&2; }
die() { log "error: $*"; exit 1; }

# The first Debian (non-security) mirror in the host's apt sources, deb822 or one-line form.
detect_mirror() {
  local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
  local url
  url=$(cat "${files[@]}" 2>/dev/null \
    | grep -v '^\s*#' \
    | grep -oE '(URIs:\s*|^deb\s+(\[[^]]*\]\s+)?)https?://[^ ]+' \
    | grep -oE 'https?://[^ ]+' \
    | grep -E '/debian/?$' | head -n 1 || true)
  echo "${url:-http://deb.debian.org/debian}"
}

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap needs it): sudo $0"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install -y debootstrap"
command -v docker >/dev/null || die "docker is missing: apt-get install -y docker.io"
docker info >/dev/null 2>&1 || die "no Docker engine answers on $(docker context inspect -f '{{.Endpoints.docker.Host}}' 2>/dev/null || echo the default socket)"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
  log "$BASE_TAG already exists (FORCE=1 to rebuild)"
  exit 0
fi

MIRROR="${DEBIAN_MIRROR:-$(detect_mirror)}"
if [ -n "${WORK_DIR:-}" ]; then
  mkdir -p "$WORK_DIR"; SCRATCH="$WORK_DIR"; KEEP_SCRATCH=1
else
  SCRATCH=$(mktemp -d /var/tmp/histopath-rootfs.XXXXXX); KEEP_SCRATCH=0
fi
ROOTFS="$SCRATCH/rootfs"
cleanup() {
  # Never leave proc/sys mounts behind; the rootfs itself is only scratch.
  for mount_point in proc sys dev/pts; do
    mountpoint -q "$ROOTFS/$mount_point" 2>/dev/null && umount -l "$ROOTFS/$mount_point" || true
  done
  [ "$KEEP_SCRATCH" = 1 ] || rm -rf "$SCRATCH"
}
trap cleanup EXIT

start=$(date +%s)
log "debootstrap $SUITE (minbase + $PACKAGES) from $MIRROR into $ROOTFS"
rm -rf "$ROOTFS"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" \
  > "$SCRATCH/debootstrap.log" 2>&1 || { tail -n 30 "$SCRATCH/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

# The host's CA bundle (it may hold a proxy's CA) and pip configuration.
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
if [ -f /etc/pip.conf ]; then
  install -D -m 0644 /etc/pip.conf "$ROOTFS/etc/pip.conf"
fi
# Keep the image small: no apt lists, caches, docs or man pages.
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
       "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/* \
       "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/*
chroot "$ROOTFS" python3 -c 'import sys, venv, ssl; assert sys.version_info[:2] == (3, 11), sys.version'

log "importing as $BASE_TAG"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "debootstrap $SUITE minbase + $PACKAGES (scripts/make-base-image.sh)" \
  - "$BASE_TAG" >/dev/null
log "done in $(( $(date +%s) - start ))s: $(docker image inspect -f '{{.Size}}' "$BASE_TAG" | awk '{printf "%.0f MB", $1/1e6}')"
