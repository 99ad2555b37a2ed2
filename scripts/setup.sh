#!/usr/bin/env bash
# Installs what recfleet needs on Debian, only what is missing. Safe to run again.
# Called by `make demo` and `make test`; needs root (or sudo) for apt-get.
set -euo pipefail

APT_PACKAGES=(chromium ffmpeg xvfb pulseaudio pulseaudio-utils fonts-dejavu-core procps ca-certificates)
NEED_CMDS=(/usr/lib/chromium/chromium ffmpeg ffprobe Xvfb pulseaudio pacat)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for c in "${NEED_CMDS[@]}"; do
  if ! command -v "$c" >/dev/null 2>&1 && [ ! -x "$c" ]; then missing+=("$c"); fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${APT_PACKAGES[*]} (missing: ${missing[*]})" >&2
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -q
  as_root apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
fi
for c in "${NEED_CMDS[@]}"; do
  if ! command -v "$c" >/dev/null 2>&1 && [ ! -x "$c" ]; then
    echo "setup: $c is still missing after apt-get install; cannot continue" >&2
    exit 1
  fi
done

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing: install Rust stable (https://rustup.rs) and run again" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi
