#!/usr/bin/env python3
"""Benchmarks the docker runtime and prints tables.

1. Image sizes: recfleet-bot:dev, recfleet:dev and the base (as `docker image inspect` gives them).
2. Container create to idle, warm bot: N times, a fresh `recfleet serve --runtime docker` with
   one idle bot wanted; from the engine's `create` event for the bot container to the moment
   `GET /v1/pool` says idle=1 (polled every 20 ms). The bot is warm then: Xvfb, PulseAudio and
   Chromium up, connected to the controller.

Run after `container/build.sh` (make test does it): `python3 bench/docker_bench.py [--runs N]`.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"
KEY = "bench"


def sh(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def pool(base):
    req = urllib.request.Request(f"{base}/v1/pool", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=2) as r:
        return json.load(r)


def one_run(net, gateway, pool_name):
    port = free_port(gateway)
    base = f"http://{gateway}:{port}"
    events = subprocess.Popen(["docker", "events", "--filter", f"label=recfleet.pool={pool_name}", "--filter", "event=create",
                               "--format", "{{.TimeNano}}"], stdout=subprocess.PIPE, text=True)
    created = []
    threading.Thread(target=lambda: created.extend(int(l) for l in events.stdout), daemon=True).start()
    with tempfile.TemporaryDirectory() as data:
        ctl = subprocess.Popen([str(BIN / "recfleet"), "serve", "--listen", f"{gateway}:{port}", "--api-key", KEY,
                                "--data-dir", data, "--runtime", "docker", "--docker-network", net, "--pool-name", pool_name,
                                "--advertise-url", f"ws://{gateway}:{port}", "--pool-min-idle", "1", "--pool-max", "1",
                                "--allow-networks", "private"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    if pool(base)["idle"] == 1:
                        idle_ns = time.time_ns()
                        break
                except OSError:
                    pass
                time.sleep(0.02)
            else:
                sys.exit("bench: no idle bot within 120 s")
        finally:
            ctl.send_signal(2)
            ctl.wait(timeout=60)
            events.terminate()
    time.sleep(0.2)
    if not created:
        sys.exit("bench: no create event seen")
    return (idle_ns - created[0]) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print("\nImage sizes")
    print(f"{'image':<24} {'MB':>8}")
    for image in ["recfleet-bot:dev", "recfleet:dev", "debian:bookworm-slim"]:
        size = int(sh("docker", "image", "inspect", image, "--format", "{{.Size}}"))
        print(f"{image:<24} {size / 1e6:>8.0f}")
    net = f"recfleet-bench-{os.getpid()}"
    sh("docker", "network", "create", net)
    try:
        gateway = sh("docker", "network", "inspect", net, "--format", "{{(index .IPAM.Config 0).Gateway}}")
        times = [one_run(net, gateway, f"bench{os.getpid()}-{i}") for i in range(args.runs)]
    finally:
        # The last bots are still stopping (their containers remove themselves): wait for them.
        deadline = time.time() + 60
        while time.time() < deadline and subprocess.run(["docker", "network", "rm", net], capture_output=True).returncode != 0:
            time.sleep(0.5)
    print(f"\nContainer create -> idle, warm bot ({args.runs} runs)")
    print(f"{'p50 s':>7} {'min s':>7} {'max s':>7}")
    print(f"{statistics.median(times):>7.2f} {min(times):>7.2f} {max(times):>7.2f}")


if __name__ == "__main__":
    main()
