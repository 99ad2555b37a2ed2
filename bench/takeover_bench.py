#!/usr/bin/env python3
"""Leader and standby on one PostgreSQL: how long after the leader dies the standby is ready.

A PostgreSQL server (Debian's, `initdb` into a temporary folder, a free port; as the `postgres`
user when run as root), then for each run two `recfleet serve` on it with their own data
folders and no bots (`--pool-min-idle 0`): the first leads, the second stands by. The leader
is stopped (SIGKILL: its lease must run out; SIGTERM: it releases the lease after its drain)
and the time from the signal to the standby's `/readyz` answering 200 is taken.

Run with `make bench` or `python3 bench/takeover_bench.py --runs 5`.
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import BIN, free_port, start_postgres, status, wait


def serve(folder, name, database, port):
    args = [str(BIN / "recfleet"), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(Path(folder) / name),
            "--api-key", "bench", "--pool-min-idle", "0", "--database-url", database, "--store", f"file://{folder}/objects"]
    log = open(Path(folder) / f"{name}.log", "ab")
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "RUST_LOG": "warn"})


def one_run(folder, database, sig, n):
    a_port, b_port = free_port(), free_port()
    leader = serve(folder, f"a{n}", database, a_port)
    wait("the leader ready", lambda: status(f"http://127.0.0.1:{a_port}/readyz") == 200)
    standby = serve(folder, f"b{n}", database, b_port)
    wait("the standby answering", lambda: status(f"http://127.0.0.1:{b_port}/readyz") == 503)
    stopped = time.monotonic()
    leader.send_signal(sig)
    wait("the standby ready", lambda: status(f"http://127.0.0.1:{b_port}/readyz") == 200)
    took = time.monotonic() - stopped
    leader.wait(timeout=15)
    standby.send_signal(signal.SIGTERM)
    standby.wait(timeout=15)
    return took


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not (BIN / "recfleet").exists():
        sys.exit("bench: build first (make build)")
    with tempfile.TemporaryDirectory(prefix="recfleet-takeover-") as folder:
        os.chmod(folder, 0o755)
        pg, database = start_postgres(folder)
        try:
            rows = []
            for name, sig in [("SIGKILL (lease runs out)", signal.SIGKILL), ("SIGTERM (lease released after the drain)", signal.SIGTERM)]:
                times = [one_run(folder, database, sig, f"{sig.value}-{i}") for i in range(args.runs)]
                rows.append((name, times))
        finally:
            pg.send_signal(signal.SIGQUIT)
            pg.wait(timeout=15)
    print("| leader stopped by | runs | standby ready after: p50 | min | max |")
    print("|---|---|---|---|---|")
    for name, times in rows:
        print(f"| {name} | {len(times)} | {statistics.median(times):.2f} s | {min(times):.2f} s | {max(times):.2f} s |")


if __name__ == "__main__":
    main()
