#!/usr/bin/env bash
# The demo: serves the bundled test meeting on loopback, records a short meeting with the bot,
# and prints where the playable MP4 and the HLS playlist are.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
MEETING_SECS=${DEMO_MEETING_SECS:-10}
OUT=${DEMO_OUT:-demo-output/$(date -u +%Y%m%dT%H%M%SZ)}

url_file=$(mktemp)
"$BIN/recfleet-meeting" >"$url_file" 2>/dev/null &
meeting_pid=$!
trap 'kill "$meeting_pid" 2>/dev/null || true; rm -f "$url_file"' EXIT
for _ in $(seq 1 50); do [ -s "$url_file" ] && break; sleep 0.1; done
base=$(head -n1 "$url_file")
[ -n "$base" ] || { echo "demo: the test meeting did not start" >&2; exit 1; }

echo "demo: recording a ${MEETING_SECS}s meeting at $base (lobby, waiting room, tiles, tone, chat, host ends it)" >&2
summary=$("$BIN/recfleet-bot" record \
  --url "$base/m/demo?wait=2&end=$MEETING_SECS" \
  --recipe tests/meeting/recipe.json \
  --bot-name "recfleet demo" \
  --out "$OUT" \
  --max-duration-secs 120 | tail -n1)
echo "$summary"
python3 - "$summary" <<'PY'
import json, sys
s = json.loads(sys.argv[1])
p = s["paths"]
print(f"\nRecorded {s['duration_secs']:.1f} s in {s['segments']} segments, ended with {s['sub_code']}.")
print(f"Playable MP4:  {p['mp4']}")
print(f"HLS playlist:  {p['playlist']}")
print(f"Timeline:      {p['events']}")
PY
