#!/usr/bin/env python3
"""Start latency through the controller: `recording_started_at - created_at` (API call to the
first captured frame) for recordings of the bundled meeting.

- warm: `recfleet serve --pool-min-idle 1`; each request waits until a bot is idle, as a pool
  that is sized for its load would have one.
- cold: `--pool-min-idle 0`; every request launches a bot (Xvfb, PulseAudio, Chromium) first.

Run with `make bench` or `python3 bench/controller_bench.py --warm 20 --cold 5`.
"""
import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"
KEY = "bench-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {KEY}")
    if data:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def ts(value):
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def wait(what, check, limit=90):
    deadline = time.time() + limit
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    sys.exit(f"bench: {what} not reached within {limit} s")


def run(kind, count, min_idle, meeting):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="recfleet-bench-") as data:
        env = dict(os.environ, RUST_LOG="warn,chromiumoxide=off")
        server = subprocess.Popen(
            [str(BIN / "recfleet"), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
             "--api-key", KEY, "--pool-min-idle", str(min_idle), "--pool-max", "2", "--allow-networks", "loopback"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait("the API", lambda: _try(lambda: call(base, "GET", "/v1/pool")))
            rows = []
            for i in range(count):
                if min_idle:
                    wait("a warm bot", lambda: call(base, "GET", "/v1/pool")["idle"] >= 1)
                else:
                    wait("an empty pool", lambda: call(base, "GET", "/v1/pool")["busy"] == 0 and call(base, "GET", "/v1/pool")["starting"] == 0)
                rec = call(base, "POST", "/v1/recordings",
                           {"meeting_url": f"{meeting}/m/{kind}{i}?end=3", "recipe_name": "recfleet-test-meeting"})
                path = f"/v1/recordings/{rec['id']}"
                done = wait("the end", lambda: (lambda r: r if r["status"] in ("completed", "failed") else None)(call(base, "GET", path)))
                if done["status"] != "completed":
                    sys.exit(f"bench: {kind} recording {i} failed: {done}")
                rows.append((ts(done["recording_started_at"]) - ts(done["created_at"]),
                             ts(done["joined_at"]) - ts(done["created_at"])))
                print(f"\r  {kind}: {i + 1}/{count}", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
            return rows
        finally:
            server.terminate()
            server.wait(timeout=60)


def _try(f):
    try:
        return f()
    except OSError:
        return None


def pct(values, p):
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warm", type=int, default=20)
    ap.add_argument("--cold", type=int, default=5)
    args = ap.parse_args()
    for b in ("recfleet", "recfleet-bot", "recfleet-meeting"):
        if not (BIN / b).exists():
            sys.exit(f"bench: {BIN / b} is missing; run `make bench` (it builds first)")
    meeting_proc = subprocess.Popen([str(BIN / "recfleet-meeting")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    meeting = meeting_proc.stdout.readline().strip()
    try:
        print(f"# recfleet start latency through the controller ({os.cpu_count()} cores, {time.strftime('%Y-%m-%d')})")
        print("| pool | recordings | first frame p50 | p99 | max | joined p50 |")
        print("|---|---|---|---|---|---|")
        for kind, count, min_idle in (("warm", args.warm, 1), ("cold", args.cold, 0)):
            if count == 0:
                continue
            rows = run(kind, count, min_idle, meeting)
            first = [r[0] * 1000 for r in rows]
            joined = [r[1] * 1000 for r in rows]
            print(f"| {kind} | {count} | {statistics.median(first):.0f} ms | {pct(first, 99):.0f} ms | {max(first):.0f} ms | {statistics.median(joined):.0f} ms |")
    finally:
        meeting_proc.terminate()


if __name__ == "__main__":
    main()
