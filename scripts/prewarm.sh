#!/usr/bin/env bash
# Reads the recording tools into the page cache before the tests: right after a build and the
# images, the first bot's Chromium once took over 30 s to start from a cold cache on CI, and its
# FFmpeg warm-up ran out of time. A user's first recording pays this once; the tests should not
# measure it. Each run is bounded; a failure here is only reported (the tests say what is wrong).
set -uo pipefail

chromium_flags=(--headless=new --no-sandbox --disable-gpu --disable-background-networking
  --disable-component-update --disable-sync --no-first-run --disable-quic)
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT

started=$SECONDS
timeout 120 /usr/lib/chromium/chromium "${chromium_flags[@]}" --user-data-dir="$profile" --dump-dom about:blank >/dev/null 2>&1 \
  || echo "prewarm: chromium did not finish (exit $?)" >&2
timeout 60 ffmpeg -hide_banner -loglevel error -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine \
  -t 1 -c:v libx264 -preset veryfast -c:a aac -f null - || echo "prewarm: ffmpeg failed (exit $?)" >&2
timeout 30 Xvfb -help >/dev/null 2>&1
timeout 30 pulseaudio --version >/dev/null 2>&1
echo "prewarm: chromium, ffmpeg, Xvfb and pulseaudio read in $((SECONDS - started)) s"
