#!/usr/bin/env python3
"""Faults during a meeting: how long the bot takes to recover and what the recording loses.

Runs the fault tests of `tests/tests/faults.rs` (the real bot recording the bundled meeting
while the test SIGKILLs Chromium's browser process, its renderers, or the capture's FFmpeg, or
stops it on a page that spins when asked to leave) `--runs` times and reads the figures they
print: the time from the fault to the rejoin or to the new encoder's first frame, the call
view's absence and the holes in the MP4, the A/V offset before and after an encoder restart,
and the time from a stop to the MP4 past a spinning page. Prints one table (docs/FAULTS.md,
docs/BENCHMARKS.md).

Run with `make bench` or `python3 bench/faults_bench.py --runs 5`.
"""
import argparse
import re
import statistics
import subprocess
import sys

from benchlib import ROOT

FIGURES = {
    "browser: kill → rejoined (ms)": (r"browser lost \(the DevTools connection broke|browser lost \(the browser process", r"rejoined (\d+) ms later"),
    "renderer: kill → rejoined (ms)": (r"browser lost \(the page's renderer crashed", r"rejoined (\d+) ms later"),
    "encoder: kill → new first frame (ms)": (None, r"its successor's first frame (\d+) ms later"),
}


def one_run():
    cmd = ["cargo", "nextest", "run", "--release", "-p", "recfleet-tests", "--test", "faults", "--no-capture",
           "--test-threads", "1", "-E", "test(killed_) | test(spins_on_leave)"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        log = done.stdout + done.stderr
        panics = [line for line in log.splitlines() if "panicked" in line or "assertion" in line or line.startswith("  ")]
        sys.exit("bench: the fault tests failed:\n" + "\n".join(panics[-40:]))
    return done.stdout + done.stderr


def parse(log):
    found = {}
    for line in log.splitlines():
        for name, (context, pattern) in FIGURES.items():
            m = re.search(pattern, line)
            if m and (context is None or re.search(context, line)):
                found.setdefault(name, []).append(float(m.group(1)))
        m = re.search(r"stopped \(a spinning page's leave included\) and finalized ([\d.]+) s after the end", line)
        if m:
            found.setdefault("spinning page: stop → MP4 made (s)", []).append(float(m.group(1)))
        m = re.search(r"call view absent for ([\d.]+) s", line)
        if m:
            found.setdefault("browser or renderer: call view absent (s)", []).append(float(m.group(1)))
        m = re.search(r"video: holes \(at, secs\) \[\([\d.]+, ([\d.]+)\)\]", line)
        if m:
            found.setdefault("encoder: hole in the MP4 (s)", []).append(float(m.group(1)))
        m = re.search(r"A/V offsets before \[([^\]]*)\], after \[([^\]]*)\]", line)
        if m:
            before = statistics.median(float(x) for x in m.group(1).split(","))
            after = statistics.median(float(x) for x in m.group(2).split(","))
            found.setdefault("encoder: A/V offset change (ms)", []).append(abs(after - before) * 1000)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    totals = {}
    for n in range(args.runs):
        print(f"bench: fault run {n + 1} of {args.runs}", file=sys.stderr, flush=True)
        for name, values in parse(one_run()).items():
            totals.setdefault(name, []).extend(values)
    print(f"| figure ({args.runs} runs) | min | median | max |")
    print("|---|---|---|---|")
    for name, values in totals.items():
        print(f"| {name} | {min(values):.2f} | {statistics.median(values):.2f} | {max(values):.2f} |")


if __name__ == "__main__":
    main()
