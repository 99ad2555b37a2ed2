#!/usr/bin/env python3
"""`--runtime ecs` launching a warm pool against moto: RunTask calls and tasks per second at pool
sizes 10, 100 and 1,000, and the cost of one reconcile pass over 1,000 tasks.

For each size, moto (ECS, EC2, S3) in `tests/ecs_agent.py --no-agent` (no containers: the tasks
stay provisioning, which is all a launch needs), and the real `recfleet serve --runtime ecs
--pool-min-idle N --pool-max N`. The harness records every RunTask call (its `count` and when it
came); the launch time is from the first call to the moment moto has started all N tasks. The
reconcile figure is `recfleet_ecs_reconcile_duration_seconds` (sum / count) over passes that begin
once all 1,000 tasks are tracked (one pass is 10 DescribeTasks calls of 100).

moto answers in-process, so these figures are the controller's pacing and batching, not AWS's
latency: on AWS, RunTask takes 0.3-1 s a call and allows about 20 calls/s.

Run with `make bench` or `python3 bench/ecs_bench.py --sizes 10 100 1000`.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchlib import BIN, ROOT, free_port, status, wait

VENV = Path(os.environ.get("RECFLEET_TOOLS_VENV", Path.home() / ".cache/recfleet/venv"))


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def harness(folder):
    proc = subprocess.Popen([str(VENV / "bin/python"), str(ROOT / "tests/ecs_agent.py"), "--host", "127.0.0.1", "--no-agent"],
                            stdout=subprocess.PIPE, stderr=open(Path(folder) / "harness.log", "ab"), text=True)
    info = json.loads(proc.stdout.readline())
    return proc, info


def serve(folder, info, n, port):
    env = {**os.environ, "AWS_ENDPOINT_URL": info["endpoint"], "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": info["region"], "RUST_LOG": "warn"}
    args = [str(BIN / "recfleet"), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(Path(folder) / f"data{n}"),
            "--api-key", "bench", "--runtime", "ecs", "--ecs-cluster", info["cluster"], "--ecs-task-definition", info["task_definition"],
            "--ecs-subnets", info["subnet"], "--ecs-security-groups", info["security_group"],
            "--store", f"s3://{info['bucket']}/bench", "--s3-path-style",
            # Never dialled: no task runs a bot here. Not loopback, as ECS needs.
            "--advertise-url", "ws://192.0.2.1:8700", "--pool-name", f"bench{n}",
            "--pool-min-idle", str(n), "--pool-max", str(n)]
    log = open(Path(folder) / f"serve{n}.log", "ab")
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env=env)


def metric(base, name):
    text = get(f"{base}/metrics")
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def one_size(folder, n, reconcile_passes):
    proc, info = harness(folder)
    port = free_port()
    controller = serve(folder, info, n, port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait("the controller", lambda: status(f"{base}/healthz") == 200, limit=30)
        control = info["control"]
        done_at = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            calls = json.loads(get(f"{control}/calls"))
            if sum(c["started"] for c in calls) >= n:
                done_at = time.time()
                break
            time.sleep(0.05)
        if done_at is None:
            sys.exit(f"bench: {n} tasks not launched within 600 s")
        calls = json.loads(get(f"{control}/calls"))
        took = done_at - calls[0]["at"]
        counts = [c["count"] for c in calls]
        row = {"size": n, "calls": len(calls), "largest": max(counts), "took": took,
               "calls_per_s": len(calls) / took, "tasks_per_s": n / took}
        if reconcile_passes:
            # Only passes that start once all N are tracked: the next one may have begun with fewer.
            time.sleep(6)
            sum0 = metric(base, "recfleet_ecs_reconcile_duration_seconds_sum")
            count0 = metric(base, "recfleet_ecs_reconcile_duration_seconds_count")
            wait("reconcile passes", lambda: metric(base, "recfleet_ecs_reconcile_duration_seconds_count") >= count0 + reconcile_passes,
                 limit=6 * reconcile_passes + 30)
            total = metric(base, "recfleet_ecs_reconcile_duration_seconds_sum") - sum0
            count = metric(base, "recfleet_ecs_reconcile_duration_seconds_count") - count0
            row["reconcile_ms"] = 1000 * total / count
            row["reconcile_passes"] = int(count)
        return row
    finally:
        controller.send_signal(signal.SIGTERM)
        controller.wait(timeout=30)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--reconcile-passes", type=int, default=4, help="passes to average at the largest size")
    args = parser.parse_args()
    if not (BIN / "recfleet").exists():
        sys.exit("bench: build first (make build)")
    with tempfile.TemporaryDirectory(prefix="recfleet-ecs-") as folder:
        rows = [one_size(folder, n, args.reconcile_passes if n == max(args.sizes) else 0) for n in args.sizes]
    print("| pool size | RunTask calls | largest count | all launched in | calls/s | tasks/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']:,} | {r['calls']} | {r['largest']} | {r['took']:.2f} s | {r['calls_per_s']:.1f} | {r['tasks_per_s']:.0f} |")
    for r in rows:
        if "reconcile_ms" in r:
            print(f"\nreconcile over {r['size']:,} tasks: {r['reconcile_ms']:.0f} ms a pass (mean of {r['reconcile_passes']})")


if __name__ == "__main__":
    main()
