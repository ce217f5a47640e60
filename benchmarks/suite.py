#!/usr/bin/env python3
"""Palisade's benchmark suite: added latency, throughput and memory against
calling the provider directly, for a minimal gateway and for the full
compliance pipeline, in one run.

    python3 benchmarks/suite.py            # full run (~4 min)
    python3 benchmarks/suite.py --smoke    # a few seconds: proves the harness, no figures worth quoting

Builds the release binary, starts the mock provider twice (answering at
once, and after 50 ms), and drives every scenario with wrk over 127.0.0.1,
interleaved round by round so that drift on a shared machine hits all
alike:

- direct: the mock itself, with a one-line chat request;
- minimal: Palisade with no tenant policy, no limits, the ledger relaxed,
  the same request;
- direct-3k: the mock itself, with a 3.8 KiB support ticket full of PII;
- full: the same ticket through key authentication, the ledger strict
  (every request durable before it is forwarded), data protection
  tokenizing its PII, and a tenant with a request rate, a token rate,
  concurrency and a daily token budget (all far above what the run
  reaches).

Figures per scenario, mock latency and concurrency: requests/s, p50, p90,
p99 and p99.9 latency (wrk's own histogram), the latency added against
direct, the gateway's CPU time per request and its RSS. Writes
benchmarks/results/suite.json. Needs wrk (Debian's package; installed here
when missing and running as root). Still to come: LiteLLM in the same run,
streaming time to first byte, 2,000 open streams, plots.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import BIN, ROOT, cpu_seconds, rss_kib, start_gateway, stop, wait_file  # noqa: E402

# A 3 KiB support ticket with the PII a real one carries.
PII = (
    "Customer Jane Doe (jane.doe@example.com, +1 415 555 0134) reports that invoice 88213 was charged twice "
    "to card 4111 1111 1111 1111. She lives at 1600 Amphitheatre Parkway, Mountain View. "
)
FILLER = (
    "The billing service retried the capture after a timeout from the payment processor, and the idempotency key "
    "was not reused, so a second capture went through. Please summarise the incident, the customer impact and the "
    "follow-up actions for the team, with owners and dates. "
)
PROMPT = (PII + FILLER * 4) * 3

LUA = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
{auth}
done = function(summary, latency, requests)
  io.write(string.format("SUITE %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
"""

LIMITS = """
[[tenants]]
name = "bench"
limits = { rpm = 100000000, tpm = 4000000000, concurrency = 10000, daily_tokens = 1000000000000 }

[tenants.dlp]
default_action = "tokenize"
"""


def ensure_wrk():
    if shutil.which("wrk"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk (Debian's package)")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)
        return
    sys.exit("wrk not found: apt-get install wrk")


def run_wrk(url, script, conns, seconds):
    threads = 1 if conns == 1 else 2
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "-s", str(script), url],
                         check=True, capture_output=True, text=True).stdout
    if "Non-2xx or 3xx responses" in out:
        sys.exit(f"wrk saw errors:\n{out}")
    line = next((l for l in out.splitlines() if l.startswith("SUITE ")), None)
    if line is None:
        sys.exit(f"wrk printed no figures:\n{out}")
    requests, duration_us, p50, p90, p99, p999 = (int(x) for x in line.split()[1:])
    ms = lambda us: us / 1000.0  # noqa: E731
    return {"requests": requests, "rps": requests / (duration_us / 1e6),
            "p50": ms(p50), "p90": ms(p90), "p99": ms(p99), "p99.9": ms(p999)}


def start_mock(work, name, latency_ms, procs):
    ready = work / f"{name}.json"
    mock = subprocess.Popen([BIN, "mock", "--listen", "127.0.0.1:0", "--latency-ms", str(latency_ms),
                             "--ready-file", ready], stderr=subprocess.DEVNULL)
    procs.append(mock)
    return wait_file(ready, mock)["addr"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few seconds, proves the harness; figures not worth quoting")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "suite.json"))
    args = ap.parse_args()
    latencies, conns = (0, 50), (1, 64)
    if args.smoke:
        args.seconds, args.rounds, latencies, conns = 1, 1, (0,), (1, 8)
    ensure_wrk()
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "palisade"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="palisade-suite-"))
    procs = []
    try:
        small = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Hello, how are you today?"}]})
        ticket = json.dumps({"model": "bench", "messages": [{"role": "user", "content": PROMPT}]})
        targets = {}
        gateways = {}
        for lat in latencies:
            mock = start_mock(work, f"mock{lat}", lat, procs)
            # Each gateway scenario against the direct path with the same body.
            scenarios = {
                "direct": ((None, mock, None), small),
                "minimal": (start_gateway(work, f"minimal{lat}", mock, "relaxed", "", procs), small),
                "direct-3k": ((None, mock, None), ticket),
                "full": (start_gateway(work, f"full{lat}", mock, "strict", LIMITS, procs), ticket),
            }
            for name, ((gw, addr, key), body) in scenarios.items():
                script = work / f"{name}{lat}.lua"
                auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
                script.write_text(LUA.format(body=body, auth=auth))
                targets[(lat, name)] = (f"http://{addr}/v1/chat/completions", script, gw)
                if gw is not None:
                    gateways[(lat, name)] = gw
        # Warm every path.
        for url, script, _ in targets.values():
            run_wrk(url, script, 4, 1)

        runs = {(lat, name, c): [] for (lat, name) in targets for c in conns}
        cpu = {key: [0.0, 0] for key in runs}
        for _ in range(args.rounds):
            for (lat, name, c) in runs:
                url, script, gw = targets[(lat, name)]
                before = cpu_seconds(gw.pid) if gw else 0.0
                r = run_wrk(url, script, c, args.seconds)
                if gw:
                    cpu[(lat, name, c)][0] += cpu_seconds(gw.pid) - before
                    cpu[(lat, name, c)][1] += r["requests"]
                runs[(lat, name, c)].append(r)

        results = []
        for (lat, name, c), rs in runs.items():
            med = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p90", "p99", "p99.9")}
            base = "direct-3k" if name == "full" else "direct"
            direct = {k: statistics.median(r[k] for r in runs[(lat, base, c)]) for k in ("rps", "p50", "p90", "p99", "p99.9")}
            row = {"mock_latency_ms": lat, "scenario": name, "concurrency": c, **med}
            if not name.startswith("direct"):
                row["compared_with"] = base
                row["added_ms"] = {k: med[k] - direct[k] for k in ("p50", "p90", "p99", "p99.9")}
                row["throughput_vs_direct"] = med["rps"] / direct["rps"]
                used, n = cpu[(lat, name, c)]
                row["gateway_cpu_us_per_request"] = 1e6 * used / max(n, 1)
                row["gateway_rss_mib"] = rss_kib(gateways[(lat, name)].pid) / 1024
            results.append(row)

        report = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
            "smoke": args.smoke,
            "seconds_per_run": args.seconds,
            "rounds": args.rounds,
            "prompt_bytes": len(PROMPT),
            "results": results,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"machine: {report['machine']}; {args.rounds} rounds x {args.seconds}s, medians; "
              f"{len(PROMPT)}-byte prompt; wrote {out}")
        print("| mock | scenario | c | req/s | vs direct | p50 ms | p99 ms | p99.9 ms | added p50 µs | added p99 µs | CPU/req | RSS MiB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            added = r.get("added_ms", {})
            fmt = lambda v, scale=1000: f"{v * scale:.0f}" if v is not None else "-"  # noqa: E731
            print(f"| {r['mock_latency_ms']} ms | {r['scenario']} | {r['concurrency']} | {r['rps']:.0f} | "
                  f"{r.get('throughput_vs_direct', 1.0):.2f} | {r['p50']:.3f} | {r['p99']:.3f} | {r['p99.9']:.3f} | "
                  f"{fmt(added.get('p50'))} | {fmt(added.get('p99'))} | "
                  f"{fmt(r.get('gateway_cpu_us_per_request'), 1)} µs | {fmt(r.get('gateway_rss_mib'), 1)} |")
    finally:
        stop(procs, work)


if __name__ == "__main__":
    main()
