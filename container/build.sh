#!/usr/bin/env bash
# Builds the images recfleet-bot:dev and recfleet:dev on a machine whose Docker engine has no
# images and can reach no registry. When the base image (debian:bookworm-slim) is missing it is
# made first: debootstrap a minimal bookworm into a folder and `docker import` it under that tag.
# Packages come from the Debian mirror (DEBIAN_MIRROR), the binaries from this workspace's
# release build. Usage: container/build.sh [--no-cache]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BASE="${RECFLEET_BASE_IMAGE:-debian:bookworm-slim}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BOT_TAG="${RECFLEET_BOT_IMAGE:-recfleet-bot:dev}"
CONTROLLER_TAG="${RECFLEET_CONTROLLER_IMAGE:-recfleet:dev}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
step() { echo "build.sh: $*" >&2; }

command -v docker >/dev/null || { echo "build.sh: docker is missing" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "build.sh: the Docker engine does not answer" >&2; exit 1; }

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { echo "build.sh: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
  rootfs="$(mktemp -d)"
  trap 'as_root rm -rf "$rootfs"' EXIT
  step "making $BASE with debootstrap from $MIRROR (no registry needed)"
  as_root debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >/dev/null
  # Slim: no package lists, docs or man pages in the base.
  as_root rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/var/cache/apt/*.bin
  echo "deb $MIRROR bookworm main" | as_root tee "$rootfs/etc/apt/sources.list" >/dev/null
  as_root tar -C "$rootfs" -c . | docker import --change 'CMD ["bash"]' - "$BASE" >/dev/null
  step "imported $BASE"
fi

if [ ! -x "$ROOT/target/release/recfleet-bot" ] || [ ! -x "$ROOT/target/release/recfleet" ]; then
  step "building the release binaries"
  (cd "$ROOT" && cargo build --release -p recfleet-bot -p recfleet)
fi

# A small build context: the binaries and this folder, not the whole target/.
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"; [ -n "${rootfs:-}" ] && as_root rm -rf "$rootfs" || true' EXIT
cp "$ROOT/target/release/recfleet-bot" "$ROOT/target/release/recfleet" "$ctx/"
# The release profile keeps line tables for backtraces on the host; images need none.
if command -v strip >/dev/null; then strip --strip-debug "$ctx/recfleet-bot" "$ctx/recfleet"; fi
cp "$ROOT"/container/Dockerfile.* "$ctx/"

# --network host: the build's apt-get reaches the mirror the way this machine does.
step "building $BOT_TAG"
docker build --network host "$@" -f "$ctx/Dockerfile.bot" -t "$BOT_TAG" "$ctx"
step "building $CONTROLLER_TAG"
docker build --network host "$@" -f "$ctx/Dockerfile.controller" -t "$CONTROLLER_TAG" "$ctx"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^(${BOT_TAG}|${CONTROLLER_TAG}|${BASE}) " >&2 || true
