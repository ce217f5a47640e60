#!/usr/bin/env python3
"""What rate limits, token accounting and budgets cost a gateway's throughput.

Starts the mock provider and three gateways in front of it that differ only
in their limits — none; in memory; shared through Redis — and drives each
with wrk over 127.0.0.1, interleaved round by round so that drift on a
shared machine hits all alike. With limits on, the tenant has a request
rate, a token rate, a concurrency limit and a daily token budget, all far
above what the run reaches (a refusal would stop the run), so every request
pays for the checks, the token count and the settlement.

Two bodies, both a ~3 KiB chat prompt: the same text every time (its token
count is remembered after the first request) and new text every time (a
counter and a random number lead the message, so every prompt is counted
afresh).

    python3 benchmarks/limits.py                  # full run (~4 min)
    python3 benchmarks/limits.py --smoke          # a few seconds
    python3 benchmarks/limits.py --redis redis://127.0.0.1:6379/0
    python3 benchmarks/limits.py --baseline /tmp/palisade-before   # A/B
    python3 benchmarks/limits.py --instances 3    # three gateways per variant

With --baseline, two more gateways run another build of palisade (limits
off and in memory), interleaved with the others, so that a change's effect
is measured against the build before it in the same run.

Needs wrk (installed from Debian's packages when missing if run as root); the Redis scenario needs a Redis (default the local one) and is
left out, saying so, if it does not answer. Writes
benchmarks/results/limits.json.
"""

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import BIN, ROOT, cpu_seconds, prepare, rss_kib, start_gateway, stop, wrk  # noqa: E402

SENTENCES = [
    "The quarterly review covered the migration of the billing service to the new cluster.",
    "Latency at the 99th percentile fell from 310 ms to 120 ms after the cache was warmed.",
    "Two incidents were opened; both were resolved within the agreed four-hour window.",
    "The team proposes moving the nightly export to an event stream by the end of March.",
    "Customers in the EU region asked for data to stay in Frankfurt and Dublin only.",
    "Please summarise the risks, the owners and the dates, and flag anything overdue.",
]
PROMPT = " ".join(SENTENCES[i % len(SENTENCES)] + f" (item {i})" for i in range(34))

FIXED = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""

FRESH = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
local head = [[{head}]]
local tail = [[{tail}]]
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, head .. "Ticket " .. n .. "-" .. math.random(1000000000) .. ". " .. tail)
end
"""

LIMITS = """
[[tenants]]
name = "bench"
limits = { rpm = 100000000, tpm = 4000000000, concurrency = 10000, daily_tokens = 1000000000000 }
"""


def redis_answers(url):
    hostport = url.split("://", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--instances", type=int, default=1,
                    help="gateway processes per variant, their runs pooled")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "limits.json"))
    ap.add_argument("--baseline", help="another palisade binary, run with limits off and in memory too")
    args = ap.parse_args()
    work, procs, mock_addr = prepare(args, "palisade-limits-bench-")
    try:
        variants = {"off": "", "memory": LIMITS}
        if redis_answers(args.redis):
            prefix = f"palisade-bench-{os.getpid()}-{int(time.time())}"
            variants["redis"] = LIMITS + f'\n[limits]\nbackend = "redis"\nredis_url = "{args.redis}"\nredis_prefix = "{prefix}"\n'
        else:
            print(f"Redis at {args.redis} does not answer: the Redis scenario is left out")

        binaries = {name: BIN for name in variants}
        if args.baseline:
            for name in ("off", "memory"):
                variants[f"baseline_{name}"] = variants[name]
                binaries[f"baseline_{name}"] = Path(args.baseline)
        # Each variant as --instances gateway processes: one process's
        # luck (where its threads and tables land) is then not the variant's.
        gateways = {}
        for name, extra in variants.items():
            for i in range(args.instances):
                dir_name = name if i == 0 else f"{name}-{i}"
                gw, addr, key = start_gateway(work, dir_name, mock_addr, "relaxed", extra, procs,
                                              binary=binaries[name])
                d = work / dir_name
                body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": PROMPT}]})
                head, tail = body.split(PROMPT)
                scripts = {}
                for kind, text in (("same_text", FIXED.format(body=body, key=key)),
                                   ("new_text", FRESH.format(head=head, tail=PROMPT + tail, key=key))):
                    p = d / f"{kind}.lua"
                    p.write_text(text)
                    scripts[kind] = p
                gateways.setdefault(name, []).append((gw, f"http://{addr}/v1/chat/completions", scripts))

        for instances in gateways.values():
            for gw, url, scripts in instances:
                for s in scripts.values():
                    wrk(url, s, 4, 1)

        runs = {(g, k): [] for g in gateways for k in ("same_text", "new_text")}
        cpu = {key: [0.0, 0] for key in runs}
        for _ in range(args.rounds):
            for i in range(args.instances):
                for (g, kind) in runs:
                    gw, url, scripts = gateways[g][i]
                    before = cpu_seconds(gw.pid)
                    r = wrk(url, scripts[kind], args.conns, args.seconds)
                    cpu[(g, kind)][0] += cpu_seconds(gw.pid) - before
                    cpu[(g, kind)][1] += r["requests"]
                    runs[(g, kind)].append(r)

        results = {}
        for (g, kind), rs in runs.items():
            med = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p90", "p99")}
            med["cpu_us_per_request"] = 1e6 * cpu[(g, kind)][0] / max(cpu[(g, kind)][1], 1)
            results.setdefault(kind, {})[g] = med
        for kind, by in results.items():
            for g, m in by.items():
                off = "baseline_off" if g.startswith("baseline_") else "off"
                m["throughput_vs_off"] = m["rps"] / by[off]["rps"]
        report = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
            "concurrency": args.conns,
            "seconds_per_run": args.seconds,
            "rounds": args.rounds,
            "instances": args.instances,
            "prompt_bytes": len(PROMPT),
            "rss_mib": {g: rss_kib(v[0][0].pid) / 1024 for g, v in gateways.items()},
            "results": results,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"machine: {report['machine']}; c={args.conns}, {args.rounds} rounds x {args.instances} "
              f"gateway(s) per variant x {args.seconds}s, medians; "
              f"{len(PROMPT)}-byte prompt; ledger relaxed")
        print("| body | limits | req/s | vs off | p50 ms | p99 ms | gateway CPU/request |")
        print("|---|---|---|---|---|---|---|")
        for kind, by in results.items():
            for g, m in by.items():
                print(f"| {kind} | {g} | {m['rps']:.0f} | {m['throughput_vs_off']:.3f} | {m['p50']:.3f} | {m['p99']:.3f} | {m['cpu_us_per_request']:.0f} µs |")
        print("RSS after the run (MiB): " + ", ".join(f"{g} {v:.1f}" for g, v in report["rss_mib"].items()))
    finally:
        stop(procs, work)


if __name__ == "__main__":
    main()
