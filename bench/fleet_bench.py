#!/usr/bin/env python3
"""One controller under a fleet's load: 10,000 bots connected and API traffic at 5,000 requests/s.

For each state database (SQLite, then a PostgreSQL server of the benchmark's own):
1. `recfleet serve` runs once to create the schema, then stops;
2. the state gets N warm bots (rows in `bots`, with tokens the load client knows) and the
   controller starts again on it with `--pool-min-idle N --pool-max N`, so the pool neither
   launches nor retires; 1,000 finished recordings are made through the API (a history to list);
3. `recfleet-fleet-load` (bench/fleet-load) connects every bot over the real WebSocket protocol
   (`Hello`, then a `Heartbeat` every 2 s, as `recfleet-bot agent` does), waits, and sends GET
   `/v1/recordings?limit=20` and `/v1/pool` in turn at a fixed rate over 64 connections, timing each request from
   its scheduled time.
Measured: API p50/p99, heartbeats processed per second (the controller's own
`recfleet_bot_messages_total`), the controller's RSS per connected bot and its CPU.

Run with `make bench` or `python3 bench/fleet_bench.py --bots 10000 --rps 5000 --secs 30`.
"""
import argparse
import hashlib
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from benchlib import BIN, PG_BIN, free_port, start_postgres, status, wait

KEY = "bench-key"
BOT_PREFIX, TOKEN_PREFIX = "bench_bot_", "bench_token_"
HISTORY = 1000


def raise_open_files():
    """Room for every bot's socket, in this process and (inherited) in its children."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def serve(folder, database, port, bots):
    args = [str(BIN / "recfleet"), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(Path(folder) / "data"),
            "--api-key", KEY, "--pool-min-idle", str(bots), "--pool-max", str(max(bots, 1)), "--store", f"file://{folder}/objects",
            # Every bot is simulated: a launch (a simulated bot declared lost) starts nothing real.
            "--bot-binary", "/bin/false"]
    if database:
        args += ["--database-url", database]
    log = open(Path(folder) / "serve.log", "ab")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "RUST_LOG": "warn"})
    wait("the controller ready", lambda: status(f"http://127.0.0.1:{port}/readyz") == 200, limit=60)
    return proc


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def add_bots(folder, database, bots):
    """N warm bots in the state, as a controller that launched them would have written."""
    if database is None:
        db = sqlite3.connect(Path(folder) / "data" / "recfleet.db")
        rows = [(f"{BOT_PREFIX}{i}", hashlib.sha256(f"{TOKEN_PREFIX}{i}".encode()).hexdigest(), "idle") for i in range(bots)]
        db.executemany("INSERT INTO bots (id, token_sha256, state, recording_id) VALUES (?, ?, ?, NULL)", rows)
        db.commit()
        db.close()
        return
    sql = (f"INSERT INTO bots (id, token_sha256, state, recording_id) SELECT '{BOT_PREFIX}' || i, "
           f"encode(sha256(('{TOKEN_PREFIX}' || i)::bytea), 'hex'), 'idle', NULL FROM generate_series(0, {bots - 1}) AS i")
    subprocess.run([str(PG_BIN / "psql"), database, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True)


def call(base, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {KEY}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def make_history(base):
    """Finished recordings to list: created while no bot is connected (queued), then stopped."""
    for i in range(HISTORY):
        rec = call(base, "POST", "/v1/recordings", {"meeting_url": f"https://meet.example.com/history-{i}"})
        call(base, "POST", f"/v1/recordings/{rec['id']}/stop")


def one_backend(name, args):
    with tempfile.TemporaryDirectory(prefix="recfleet-fleet-") as folder:
        os.chmod(folder, 0o755)
        pg = None
        database = None
        if name == "PostgreSQL":
            pg, database = start_postgres(folder)
        try:
            port = free_port()
            stop(serve(folder, database, port, 0))
            add_bots(folder, database, args.bots)
            controller = serve(folder, database, port, args.bots)
            try:
                base = f"http://127.0.0.1:{port}"
                make_history(base)
                load = subprocess.run(
                    [str(BIN / "recfleet-fleet-load"), "--controller", base, "--controller-pid", str(controller.pid), "--api-key", KEY,
                     "--bots", str(args.bots), "--bot-prefix", BOT_PREFIX, "--token-prefix", TOKEN_PREFIX, "--rps", str(args.rps),
                     "--duration-secs", str(args.secs)],
                    stdout=subprocess.PIPE, check=True, timeout=600)
                return json.loads(load.stdout)
            finally:
                stop(controller)
        finally:
            if pg is not None:
                pg.send_signal(signal.SIGQUIT)
                pg.wait(timeout=15)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bots", type=int, default=10_000)
    parser.add_argument("--rps", type=int, default=5_000)
    parser.add_argument("--secs", type=float, default=30)
    parser.add_argument("--backend", choices=["SQLite", "PostgreSQL"], action="append")
    args = parser.parse_args()
    for tool in ["recfleet", "recfleet-fleet-load"]:
        if not (BIN / tool).exists():
            sys.exit(f"bench: {BIN / tool} is missing: build first (make build)")
    raise_open_files()
    rows = [(name, one_backend(name, args)) for name in args.backend or ["SQLite", "PostgreSQL"]]
    print("| state | bots connected | API req/s (target) | API p50 | API p99 | API max | errors | heartbeats/s sent, processed | "
          "controller RSS per bot | controller CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['bots_connected']} of {r['bots']} in {r['connect_secs']:.1f} s | {r['api_rps']:.0f} ({r['api_target_rps']}) "
              f"| {r['api_p50_ms']:.2f} ms | {r['api_p99_ms']:.2f} ms | {r['api_max_ms']:.0f} ms | {r['api_errors']} "
              f"| {r['heartbeats_sent_per_sec']:.0f}, {r['heartbeats_processed_per_sec']:.0f} "
              f"| {r['rss_per_bot_bytes'] / 1024:.1f} KiB ({r['rss_before_bytes'] / 2**20:.0f} MiB → {r['rss_with_bots_bytes'] / 2**20:.0f} MiB) "
              f"| {r['controller_cpu_cores']:.2f} cores |")


if __name__ == "__main__":
    main()
