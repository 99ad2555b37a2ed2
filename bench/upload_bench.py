#!/usr/bin/env python3
"""Benchmarks the bot's uploader against a real S3-compatible server (moto's) and prints a table.

1. Upload lag: one recording of the bundled meeting (default 60 s) uploading to moto through a
   loopback proxy; from the bot's `upload.jsonl`, the time from a segment closing on disk to
   its PUT succeeding: p50, p99, max.
2. Drain: the same, with the proxy cut for an outage (default 30 s) in the middle; the backlog
   at the moment the store comes back, how long it takes to drain, and the drain rate in
   segments/s and MB/s (segments keep closing meanwhile, so the rate is net of new ones).

Run with `make bench` (builds first) or `python3 bench/upload_bench.py --help`. Needs
`scripts/setup.sh` to have installed moto into its virtualenv.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"
RECIPE = ROOT / "tests" / "meeting" / "recipe.json"
VENV = Path(os.environ.get("RECFLEET_TOOLS_VENV", Path.home() / ".cache" / "recfleet" / "venv"))
BUCKET = "recfleet-bench"

from record_bench import start_meeting  # noqa: E402  (the same bundled meeting server)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=30):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"bench: nothing listens on {port}")


class Proxy:
    """A TCP proxy whose `cut` drops open connections and refuses new ones."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.cut = False
        self.conns = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            client, _ = self.sock.accept()
            if self.cut:
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def set_cut(self, cut):
        self.cut = cut
        if cut:
            with self.lock:
                for s in self.conns:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                self.conns = []


def aws_env(endpoint):
    env = dict(os.environ)
    env.update({
        "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    })
    return env


def journal(out):
    lines = []
    for line in (Path(out) / "upload.jsonl").read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return lines


def record(url, out, endpoint, secs, outage=None, proxy=None):
    cmd = [str(BIN / "recfleet-bot"), "record", "--url", f"{url}/m/bench?end={secs}", "--recipe", str(RECIPE),
           "--out", str(out), "--recording-id", Path(out).name, "--store", f"s3://{BUCKET}", "--s3-path-style",
           "--max-duration-secs", str(secs + 30)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=aws_env(endpoint))
    restored_ms = None
    if outage:
        start, length = outage
        # The outage starts `start` s into the recording (events.json has recording_started).
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                ev = json.loads((Path(out) / "events.json").read_text())
                if any(e["kind"] == "recording_started" for e in ev["events"]):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        time.sleep(start)
        proxy.set_cut(True)
        time.sleep(length)
        proxy.set_cut(False)
        restored_ms = int(time.time() * 1000)
    stdout, _ = proc.communicate(timeout=secs + 180)
    summary = json.loads(stdout.strip().splitlines()[-1])
    return summary, journal(out), restored_ms


def pct(values, q):
    values = sorted(values)
    return values[round((len(values) - 1) * q)] if values else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--secs", type=int, default=60, help="length of each recording")
    ap.add_argument("--outage", type=int, default=30, help="length of the outage in the drain run")
    args = ap.parse_args()
    moto_bin = VENV / "bin" / "moto_server"
    if not moto_bin.exists():
        sys.exit(f"bench: {moto_bin} is missing; run scripts/setup.sh")
    port = free_port()
    moto = subprocess.Popen([str(moto_bin), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meeting, url = start_meeting()
    try:
        wait_port(port)
        subprocess.run([str(VENV / "bin" / "python"), "-c",
                        f"import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:{port}', region_name='us-east-1',"
                        f" aws_access_key_id='a', aws_secret_access_key='b').create_bucket(Bucket='{BUCKET}')"], check=True)
        proxy = Proxy(port)
        endpoint = f"http://127.0.0.1:{proxy.port}"
        with tempfile.TemporaryDirectory() as tmp:
            summary, lines, _ = record(url, Path(tmp) / "rec_lag", endpoint, args.secs)
            lags = [l["lag_ms"] for l in lines if l["state"] == "stored" and l["name"].startswith("seg_")]
            seg_bytes = [l["segment"]["bytes"] for l in lines if l["state"] == "closed" and l["segment"]["name"].startswith("seg_")]
            print(f"\nUpload lag, segment closed -> stored in moto ({args.secs} s recording, {len(lags)} segments, "
                  f"mean segment {statistics.mean(seg_bytes) / 1e6:.2f} MB)")
            print(f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'not uploaded':>13}")
            print(f"{pct(lags, 0.5):>8} {pct(lags, 0.99):>8} {max(lags):>8} {len(summary['upload']['not_uploaded']):>13}")

            secs = max(args.secs, args.outage + 20)
            summary, lines, restored = record(url, Path(tmp) / "rec_drain", endpoint, secs, outage=(5, args.outage), proxy=proxy)
            closed = {l["segment"]["name"]: l for l in lines if l["state"] == "closed"}
            stored = {l["name"]: l for l in lines if l["state"] == "stored"}
            backlog = [n for n, l in closed.items() if l["at_ms"] <= restored and (n not in stored or stored[n]["at_ms"] > restored)]
            drained_at = max(stored[n]["at_ms"] for n in backlog) if backlog else restored
            first_at = min(stored[n]["at_ms"] for n in backlog) if backlog else restored
            drain_s = max((drained_at - restored) / 1000, 0.001)
            wait_s = (first_at - restored) / 1000
            send_s = max((drained_at - first_at) / 1000, 0.001)
            mb = sum(closed[n]["segment"]["bytes"] for n in backlog) / 1e6
            up = summary["upload"]
            print(f"\nDrain after a {args.outage} s outage ({secs} s recording)")
            print(f"{'backlog':>8} {'MB':>6} {'retry wait s':>13} {'send s':>7} {'seg/s':>7} {'MB/s':>6} {'drained s':>10} {'peak':>5} {'failed reqs':>12} {'lost':>5}")
            print(f"{len(backlog):>8} {mb:>6.1f} {wait_s:>13.2f} {send_s:>7.2f} {len(backlog) / send_s:>7.1f} {mb / send_s:>6.1f} "
                  f"{drain_s:>10.2f} {up['peak_backlog']:>5} {up['failed_attempts']:>12} {len(up['not_uploaded']):>5}")
    finally:
        meeting.terminate()
        moto.terminate()


if __name__ == "__main__":
    main()
