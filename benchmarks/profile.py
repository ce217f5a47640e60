#!/usr/bin/env python3
"""Where the gateway's time and memory go, for the benchmark targets it
misses. Counts, not timings: valgrind's tools give the same figures for
the same binary and inputs whatever else the machine is doing.

    python3 benchmarks/profile.py cpu                 # minimal path, instructions per request
    python3 benchmarks/profile.py cpu --scenario full # the full compliance pipeline
    python3 benchmarks/profile.py cpu --scenario limits   # limits.py's prompt, limits in memory
    python3 benchmarks/profile.py cpu --scenario prompt   # the same prompt, limits off
    python3 benchmarks/profile.py cpu --scenario limits --new-text   # a new prompt every request
    python3 benchmarks/profile.py streams             # heap held per open stream (massif)

cpu: builds `--profile profiling` (release code with line tables), runs the
gateway under callgrind, warms it with 50 requests, zeroes the counters,
sends --requests chat requests one after another over one connection, and
prints the instructions per request and the functions that account for
them (inclusive and self), from callgrind_annotate. With --new-text (prompt
and limits) every request's message is led by a counter and a random
number, as in limits.py's new-text body, so no count is remembered. The raw output stays in
benchmarks/results/callgrind.<scenario>.out for kcachegrind.

streams: runs the gateway under massif, opens --streams streaming requests
through it at once (the mock holds each for seconds between events), and
prints the heap at the peak per stream and the allocation sites that hold
it (ms_print's peak snapshot), raw output in benchmarks/results/massif.out.
"""

import argparse
import asyncio
import http.client
import itertools
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import BIN, ROOT, start_gateway, stop, wait_file  # noqa: E402
from suite import LIMITS, PROMPT, hold_streams  # noqa: E402

PROFILING_BIN = ROOT / "target" / "profiling" / "palisade"
RESULTS = ROOT / "benchmarks" / "results"


def chat(conn, key, body):
    conn.request("POST", "/v1/chat/completions", body=body,
                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"gateway answered {r.status}")


def fresh(body, n):
    """`body` with its message led by a counter and a random number."""
    led = body.replace('"content": "', f'"content": "Ticket {n}-{random.randrange(10**9)}. ', 1)
    assert led != body, "the body has no message content to lead"
    return led


def start_mock(work, procs):
    ready = work / "mock.json"
    mock = subprocess.Popen([BIN, "mock", "--listen", "127.0.0.1:0", "--ready-file", ready],
                            stderr=subprocess.DEVNULL)
    procs.append(mock)
    return wait_file(ready, mock)["addr"]


def cpu(args, work, procs):
    mock = start_mock(work, procs)
    name = args.scenario + ("-new-text" if args.new_text else "")
    out = RESULTS / f"callgrind.{name}.out"
    raw = work / "callgrind.raw"
    wrap = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={raw}"]
    durability, extra, body = ("relaxed", "", json.dumps(
        {"model": "bench", "messages": [{"role": "user", "content": "Hello, how are you today?"}]}))
    if args.new_text and args.scenario not in ("prompt", "limits"):
        sys.exit("--new-text goes with --scenario prompt or limits")
    if args.scenario == "full":
        durability, extra = "strict", LIMITS
        body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": PROMPT}]})
    elif args.scenario in ("prompt", "limits"):
        # limits.py's gateways, limits off and in memory, with its prompt.
        import limits
        extra = limits.LIMITS if args.scenario == "limits" else ""
        body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": limits.PROMPT}]})
    gw, addr, key = start_gateway(work, args.scenario, mock, durability, extra, procs,
                                  wrap=wrap, binary=PROFILING_BIN)
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    bodies = (fresh(body, n) for n in itertools.count()) if args.new_text else itertools.repeat(body)
    for _ in range(50):
        chat(conn, key, next(bodies))
    # Count the measured requests only: instrumentation on, then off, and
    # the counts written when the gateway stops.
    subprocess.run(["callgrind_control", "-i", "on", str(gw.pid)], check=True, capture_output=True)
    for _ in range(args.requests):
        chat(conn, key, next(bodies))
    subprocess.run(["callgrind_control", "-i", "off", str(gw.pid)], check=True, capture_output=True)
    conn.close()
    stop([gw], work / "none")
    procs.remove(gw)
    shutil.move(raw, out)
    for ann, flag in (("inclusive", "--inclusive=yes"), ("self", "--inclusive=no")):
        text = subprocess.run(["callgrind_annotate", flag, "--threshold=95", str(out)], check=True,
                              capture_output=True, text=True).stdout
        lines = text.splitlines()
        total = next((int(l.split()[0].replace(",", "")) for l in lines if "PROGRAM TOTALS" in l), None)
        if ann == "inclusive":
            print(f"{name}: {total:,} instructions in {args.requests} requests = "
                  f"{total // args.requests:,} per request (callgrind, {out})")
        print(f"\n== top functions, {ann} ==")
        rows = [l for l in lines if l.strip() and l.lstrip()[0].isdigit() and "PROGRAM TOTALS" not in l]
        for l in rows[: args.top]:
            count, _, name = l.strip().partition(" ")
            pct = 100 * int(count.replace(",", "")) / total
            print(f"{pct:5.1f}%  {name.strip()[:150]}")


def streams(args, work, procs):
    mock = start_mock(work, procs)
    out = RESULTS / "massif.out"
    wrap = ["valgrind", "--tool=massif", "--depth=40", "--threshold=0.5", f"--massif-out-file={out}"]
    gw, addr, key = start_gateway(work, "streams", mock, "relaxed", "", procs, wrap=wrap, binary=PROFILING_BIN)
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    chat(conn, key, json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Hello"}]}))
    conn.close()

    async def hold():
        writers, took = await hold_streams(addr, key, args.streams, chunk_delay_ms=20000)
        # Let massif take snapshots while every stream is open.
        await asyncio.sleep(5)
        for w in writers:
            w.close()
        return took

    took = asyncio.run(hold())
    time.sleep(1)
    stop([gw], work / "none")
    procs.remove(gw)
    text = subprocess.run(["ms_print", str(out)], check=True, capture_output=True, text=True).stdout
    peak = max((int(l.split()[2].replace(",", "")) for l in text.splitlines()
                if l.strip()[:1].isdigit() and len(l.split()) >= 6 and l.split()[2].replace(",", "").isdigit()),
               default=0)
    print(f"{args.streams} streams open at once (opened in {took:.1f} s): heap peak {peak / 1024 / 1024:.1f} MiB, "
          f"{peak / args.streams / 1024:.1f} KiB per stream including the baseline (massif, {out})")
    detail = text[text.find("->"):] if "->" in text else ""
    print("\n== allocation sites at the last detailed snapshot ==")
    print("\n".join(detail.splitlines()[: args.top * 3]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["cpu", "streams"])
    ap.add_argument("--scenario", choices=["minimal", "full", "prompt", "limits"], default="minimal")
    ap.add_argument("--new-text", action="store_true", help="a new prompt every request")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--streams", type=int, default=500)
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind not found: apt-get install valgrind")
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "palisade"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--profile", "profiling", "--quiet", "-p", "palisade"], cwd=ROOT, check=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="palisade-profile-"))
    procs = []
    try:
        (cpu if args.what == "cpu" else streams)(args, work, procs)
    finally:
        stop(procs, work)


if __name__ == "__main__":
    main()
