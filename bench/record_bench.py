#!/usr/bin/env python3
"""Benchmarks one recording bot on this machine and prints tables.

1. Start latency: N short recordings of the bundled meeting; from events.json, the time from
   the join being done to FFmpeg's first frame and to the first segment on disk.
2. A long recording (default 600 s): every few seconds, CPU and memory of each child of the bot
   (Xvfb, PulseAudio, the pacat keeper, Chromium and all its processes, FFmpeg, the bot itself)
   read from /proc. CPU is cores used over the run; memory is RSS (and PSS for Chromium, whose
   processes share pages). Memory must stay flat: the table shows the first and last minute.
3. Optionally (--presets), x264 presets compared on the same meeting: FFmpeg's CPU and bitrate.

Run with `make bench` (builds first) or `python3 bench/record_bench.py --help`.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"
RECIPE = ROOT / "tests" / "meeting" / "recipe.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def start_meeting():
    proc = subprocess.Popen([str(BIN / "recfleet-meeting")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        sys.exit("bench: the test meeting did not start")
    return proc, url


def record(url, out, extra=(), wait=True):
    cmd = [str(BIN / "recfleet-bot"), "record", "--url", url, "--recipe", str(RECIPE), "--out", str(out), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if wait:
        out_text, _ = proc.communicate()
        return proc, out_text
    return proc, None


def events(out):
    data = json.loads((Path(out) / "events.json").read_text())
    return {e["kind"]: e for e in data["events"]}


def children(root):
    """Every descendant of root (and root itself) as {pid: (group, comm)}."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        parents[int(entry)] = ppid
    found, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == p and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return {pid: group_of(pid, root) for pid in found}


def group_of(pid, root):
    if pid == root:
        return "bot (recfleet-bot)"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return "?"
    name = os.path.basename(cmd)
    if "chromium" in cmd:
        return "chromium (all processes)"
    return {"Xvfb": "xvfb", "pulseaudio": "pulseaudio", "pacat": "pacat (sink keeper)", "ffmpeg": "ffmpeg"}.get(name, name)


def sample(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rfind(")") + 2:].split()
        ticks = int(fields[11]) + int(fields[12])
        rss_kb = int(fields[21]) * PAGE_KB
        pss_kb = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss_kb = int(line.split()[1])
        return ticks, rss_kb, pss_kb
    except (OSError, IndexError, ValueError):
        return None


def start_latency(url, runs):
    rows = []
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="recfleet-bench-") as out:
            proc, _ = record(f"{url}/m/start{i}?end=4", Path(out) / "rec")
            if proc.returncode != 0:
                sys.exit(f"bench: start run {i} failed ({proc.returncode})")
            ev = events(Path(out) / "rec")
            joined = ev["joined"]["elapsed_ms"]
            rows.append((ev["recording_started"]["elapsed_ms"] - joined, ev["first_segment"]["elapsed_ms"] - joined))
    first = [r[0] for r in rows]
    seg = [r[1] for r in rows]
    print(f"\n## Start latency over {runs} recordings (join done -> ...), ms")
    print("| measure | min | p50 | max |")
    print("|---|---|---|---|")
    print(f"| first frame captured | {min(first)} | {statistics.median(first):.0f} | {max(first)} |")
    print(f"| first 2 s segment on disk | {min(seg)} | {statistics.median(seg):.0f} | {max(seg)} |")


def long_run(url, secs, every):
    with tempfile.TemporaryDirectory(prefix="recfleet-bench-") as out:
        rec = Path(out) / "rec"
        proc, _ = record(f"{url}/m/long?end=0", rec, ["--max-duration-secs", str(secs)], wait=False)
        # Wait for the capture to run before sampling.
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if "recording_started" in events(rec):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        samples = []  # (t, {group: [ticks, rss, pss]})
        t0 = time.time()
        while proc.poll() is None:
            groups = {}
            for pid, group in children(proc.pid).items():
                s = sample(pid)
                if s:
                    g = groups.setdefault(group, [0, 0, 0])
                    for i in range(3):
                        g[i] += s[i]
            if groups.get("ffmpeg"):
                samples.append((time.time() - t0, groups))
            time.sleep(every)
            print(f"\r  recording... {time.time() - t0:5.0f} / {secs} s", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        summary = json.loads(proc.stdout.read().strip().splitlines()[-1])
        if proc.returncode != 0:
            sys.exit(f"bench: the long recording failed: {summary}")
    first, last = samples[0], samples[-1]
    minute = next((s for s in samples if s[0] >= 60), first)
    span = last[0] - first[0]
    print(f"\n## One {secs} s recording at 720p30 (x264 ultrafast), sampled every {every} s")
    print(f"Encoder: {summary['capture']}")
    print("| child | CPU (cores) | RSS at 1 min (MB) | RSS at end (MB) | max RSS (MB) | PSS at end (MB) |")
    print("|---|---|---|---|---|---|")
    total_cpu = 0.0
    for group in sorted(last[1]):
        cpu = (last[1][group][0] - first[1].get(group, [0])[0]) / CLK_TCK / span
        total_cpu += cpu
        rss = [s[1].get(group, [0, 0, 0])[1] for s in samples]
        print(
            f"| {group} | {cpu:.2f} | {minute[1].get(group, [0, 0])[1] / 1024:.0f} | {last[1][group][1] / 1024:.0f} | "
            f"{max(rss) / 1024:.0f} | {last[1][group][2] / 1024:.0f} |"
        )
    print(f"| **all** | **{total_cpu:.2f}** | | | | |")
    return samples


def presets(url, secs):
    print(f"\n## x264 presets, 720p30, {secs} s each: FFmpeg's CPU and the file's bitrate")
    print("| preset | FFmpeg CPU (cores) | video+audio Mb/s | min speed | dropped frames |")
    print("|---|---|---|---|---|")
    for preset in ["ultrafast", "superfast", "veryfast"]:
        with tempfile.TemporaryDirectory(prefix="recfleet-bench-") as out:
            rec = Path(out) / "rec"
            proc, _ = record(f"{url}/m/p-{preset}?end=0", rec, ["--max-duration-secs", str(secs), "--x264-preset", preset], wait=False)
            while proc.poll() is None and "recording_started" not in (events(rec) if (rec / "events.json").exists() else {}):
                time.sleep(0.2)
            time.sleep(3)
            ff = [p for p, g in children(proc.pid).items() if g == "ffmpeg"]
            a = sample(ff[0]) if ff else None
            ta = time.time()
            time.sleep(secs - 6)
            b = sample(ff[0]) if ff else None
            tb = time.time()
            stdout, _ = proc.communicate()
            summary = json.loads(stdout.strip().splitlines()[-1])
            size = (rec / "recording.mp4").stat().st_size
            cpu = (b[0] - a[0]) / CLK_TCK / (tb - ta) if a and b else float("nan")
            cap = summary["capture"]
            print(f"| {preset} | {cpu:.2f} | {size * 8 / summary['duration_secs'] / 1e6:.2f} | {cap['min_speed']:.2f} | {cap['dropped_frames']} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--secs", type=int, default=600, help="length of the long recording (default 600)")
    ap.add_argument("--every", type=float, default=5.0, help="sampling period in seconds (default 5)")
    ap.add_argument("--starts", type=int, default=5, help="short recordings for start latency (default 5)")
    ap.add_argument("--presets", type=int, default=0, metavar="SECS", help="also compare x264 presets, SECS each")
    args = ap.parse_args()
    for b in ("recfleet-bot", "recfleet-meeting"):
        if not (BIN / b).exists():
            sys.exit(f"bench: {BIN / b} is missing; run `make bench` (it builds first)")
    meeting, url = start_meeting()
    try:
        print(f"# recfleet bot benchmark ({os.cpu_count()} cores, {time.strftime('%Y-%m-%d')})")
        start_latency(url, args.starts)
        if args.presets:
            presets(url, args.presets)
        long_run(url, args.secs, args.every)
    finally:
        meeting.send_signal(signal.SIGTERM)


if __name__ == "__main__":
    main()
