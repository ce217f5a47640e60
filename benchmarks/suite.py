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
  reaches);
- litellm: LiteLLM's proxy, installed from PyPI into benchmarks/.venv
  (pinned in benchmarks/requirements.txt) and run as its production guide
  recommends (see peers.py), with the one-line request.

Figures per scenario, mock latency and concurrency: requests/s, p50, p90,
p99 and p99.9 latency (wrk's own histogram), the latency added against
direct, the gateway's CPU time per request and its RSS (summed over a
process and its children, for LiteLLM's workers), the latency distribution,
and the ratios Palisade / LiteLLM. Then streams: the
time to the first event, direct and through the minimal gateway, one at a
time over one connection; and the RSS of a fresh minimal gateway (idle
during the load runs) with 2,000 streams open through it at once (100 in
smoke mode). Writes
benchmarks/results/suite.json and, beside it, latency-cdf.png and
throughput.png (plots.py). Needs wrk (Debian's package; installed here when
missing and running as root) and PyPI for the virtualenv (`--no-litellm`
leaves the peer out; the plots are still drawn when the virtualenv is there).
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
import peers  # noqa: E402
from overhead import BIN, ROOT, ensure_wrk, rss_kib, start_gateway, stop, ttfb, wait_file  # noqa: E402

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
  local e = summary.errors
  io.write(string.format("SUITE %d %d %d", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout))
  for _, p in ipairs({{{percentiles}}}) do
    io.write(string.format(" %g:%d", p, latency:percentile(p)))
  end
  io.write("\\n")
end
"""
# Points of the latency distribution wrk reports for each run (the CDF plot).
PERCENTILES = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9, 99.99)

LIMITS = """
[[tenants]]
name = "bench"
limits = { rpm = 100000000, tpm = 4000000000, concurrency = 10000, daily_tokens = 1000000000000 }

[tenants.dlp]
default_action = "tokenize"
"""


def run_wrk(url, script, conns, seconds):
    threads = 1 if conns == 1 else 2
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "30s",
                          "-s", str(script), url], check=True, capture_output=True, text=True).stdout
    line = next((l for l in out.splitlines() if l.startswith("SUITE ")), None)
    if line is None:
        sys.exit(f"wrk printed no figures:\n{out}")
    fields = line.split()
    requests, duration_us, errors = (int(x) for x in fields[1:4])
    if errors:
        sys.exit(f"wrk saw {errors} errors against {url}:\n{out}")
    pct = {p: int(us) / 1000.0 for p, us in (f.split(":") for f in fields[4:])}
    return {"requests": requests, "rps": requests / (duration_us / 1e6),
            "p50": pct["50"], "p90": pct["90"], "p99": pct["99"], "p99.9": pct["99.9"], "percentiles_ms": pct}


def start_mock(work, name, latency_ms, procs):
    ready = work / f"{name}.json"
    mock = subprocess.Popen([BIN, "mock", "--listen", "127.0.0.1:0", "--latency-ms", str(latency_ms),
                             "--ready-file", ready], stderr=subprocess.DEVNULL)
    procs.append(mock)
    return wait_file(ready, mock)["addr"]


async def hold_streams(addr, key, n, chunk_delay_ms):
    """Opens n streaming chat requests at once and waits until every one
    has its first event. Returns the open connections (close them) and the
    seconds it took."""
    import asyncio

    host, port = addr.rsplit(":", 1)
    body = json.dumps({"model": "bench", "stream": True, "messages": [{"role": "user", "content": "Hello"}]}).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\n{auth}"
            f"x-mock-chunk-delay-ms: {chunk_delay_ms}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()

    async def one():
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head + body)
        await writer.drain()
        buf = b""
        while b"data:" not in buf:
            chunk = await reader.read(65536)
            if not chunk:
                raise RuntimeError("stream closed before its first event")
            buf += chunk
        return writer

    started = time.perf_counter()
    writers = await asyncio.gather(*(one() for _ in range(n)))
    return writers, time.perf_counter() - started


def open_streams(gw, addr, key, n):
    """The gateway's RSS with n streams open through it at once."""
    import asyncio

    async def run():
        before = rss_kib(gw.pid)
        writers, took = await hold_streams(addr, key, n, chunk_delay_ms=3000)
        held = rss_kib(gw.pid)
        for w in writers:
            w.close()
        return {"streams": n, "rss_before_mib": before / 1024, "rss_with_streams_mib": held / 1024,
                "kib_per_stream": (held - before) / n, "seconds_to_open": took}

    return asyncio.run(run())


def median_row(rs):
    row = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p90", "p99", "p99.9")}
    row["percentiles_ms"] = {p: statistics.median(r["percentiles_ms"][p] for r in rs) for p in rs[0]["percentiles_ms"]}
    return row


def peer_ratios(results):
    """Palisade against LiteLLM at each mock latency and concurrency: how
    many times its requests per second, and what fraction of LiteLLM's added
    p99 and RSS."""
    by = {(r["mock_latency_ms"], r["scenario"], r["concurrency"]): r for r in results}
    out = []
    for (lat, name, c), peer in by.items():
        if name != "litellm":
            continue
        for ours in ("minimal", "full"):
            r = by.get((lat, ours, c))
            if r is None:
                continue
            out.append({
                "mock_latency_ms": lat, "concurrency": c, "palisade": ours,
                "rps_times": r["rps"] / peer["rps"],
                "added_p99_fraction": r["added_ms"]["p99"] / peer["added_ms"]["p99"] if peer["added_ms"]["p99"] > 0 else None,
                "rss_fraction": r["gateway_rss_mib"] / peer["gateway_rss_mib"],
            })
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few seconds, proves the harness; figures not worth quoting")
    ap.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out (no PyPI needed)")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "suite.json"))
    args = ap.parse_args()
    # Concurrency per mock latency: a sweep with the mock answering at
    # once (the throughput plot), 1 and 64 behind a 50 ms provider.
    sweep = {0: (1, 8, 64, 256), 50: (1, 64)}
    if args.smoke:
        args.seconds, args.rounds, sweep = 1, 1, {0: (1, 8)}
    ensure_wrk()
    venv_python = None if args.no_litellm else peers.python()
    # Thousands of open streams need as many sockets, here and in the
    # gateway and mock started below (they inherit the limit).
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "palisade"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="palisade-suite-"))
    procs = []
    try:
        small = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Hello, how are you today?"}]})
        ticket = json.dumps({"model": "bench", "messages": [{"role": "user", "content": PROMPT}]})
        targets = {}
        servers = {}
        keys = {}
        for lat in sweep:
            mock = start_mock(work, f"mock{lat}", lat, procs)
            # Each proxy against the direct path with the same body.
            scenarios = {
                "direct": ((None, mock, None), small),
                "minimal": (start_gateway(work, f"minimal{lat}", mock, "relaxed", "", procs), small),
                "direct-3k": ((None, mock, None), ticket),
                "full": (start_gateway(work, f"full{lat}", mock, "strict", LIMITS, procs), ticket),
            }
            if venv_python:
                port = free_port()
                scenarios["litellm"] = (peers.start_litellm(work, f"litellm{lat}", mock, port, procs,
                                                            workers=os.cpu_count() or 1), small)
            for name, ((server, addr, key), body) in scenarios.items():
                script = work / f"{name}{lat}.lua"
                auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
                script.write_text(LUA.format(body=body, auth=auth, percentiles=", ".join(map(str, PERCENTILES))))
                targets[(lat, name)] = (f"http://{addr}/v1/chat/completions", script, server)
                if server is not None:
                    servers[(lat, name)] = server
                    keys[(lat, name)] = key
        # A gateway of its own for the open streams, idle until then, so
        # that its RSS holds the streams and not what the load runs left in
        # the allocator.
        gw_streams, streams_addr, streams_key = start_gateway(work, "streams", mock_addr_first(targets, sweep), "relaxed",
                                                              "", procs)
        # Warm every path.
        for url, script, _ in targets.values():
            run_wrk(url, script, 4, 1)

        runs = {(lat, name, c): [] for (lat, name) in targets for c in sweep[lat]}
        cpu = {key: [0.0, 0] for key in runs}
        for _ in range(args.rounds):
            for (lat, name, c) in runs:
                url, script, server = targets[(lat, name)]
                before = peers.tree_cpu_seconds(server.pid) if server else 0.0
                r = run_wrk(url, script, c, args.seconds)
                if server:
                    cpu[(lat, name, c)][0] += peers.tree_cpu_seconds(server.pid) - before
                    cpu[(lat, name, c)][1] += r["requests"]
                runs[(lat, name, c)].append(r)

        results = []
        for (lat, name, c), rs in runs.items():
            med = median_row(rs)
            base = "direct-3k" if name == "full" else "direct"
            direct = median_row(runs[(lat, base, c)])
            row = {"mock_latency_ms": lat, "scenario": name, "concurrency": c, **med}
            if not name.startswith("direct"):
                row["compared_with"] = base
                row["added_ms"] = {k: med[k] - direct[k] for k in ("p50", "p90", "p99", "p99.9")}
                row["throughput_vs_direct"] = med["rps"] / direct["rps"]
                used, n = cpu[(lat, name, c)]
                row["gateway_cpu_us_per_request"] = 1e6 * used / max(n, 1)
                row["gateway_rss_mib"] = peers.tree_rss_kib(servers[(lat, name)].pid) / 1024
            results.append(row)
        ratios = peer_ratios(results)

        # Streams: time to the first event, one at a time over one
        # connection; then many open at once.
        lat0 = next(iter(sweep))
        mock_addr0 = mock_addr_first(targets, sweep)
        min_addr = targets[(lat0, "minimal")][0].split("/")[2]
        min_key = keys[(lat0, "minimal")]
        n = 50 if args.smoke else 500
        first_event = {}
        for name, addr in (("direct", mock_addr0), ("minimal", min_addr)):
            t = ttfb(addr, min_key, n)
            first_event[name] = {"p50": statistics.median(t), "p99": t[int(len(t) * 0.99) - 1]}
        first_event["added_ms"] = {k: first_event["minimal"][k] - first_event["direct"][k] for k in ("p50", "p99")}
        streams = open_streams(gw_streams, streams_addr, streams_key, 100 if args.smoke else 2000)

        report = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
            "smoke": args.smoke,
            "seconds_per_run": args.seconds,
            "rounds": args.rounds,
            "prompt_bytes": len(PROMPT),
            "litellm_version": peers.version(venv_python, "litellm") if venv_python else None,
            "results": results,
            "palisade_vs_litellm": ratios,
            "stream_first_event_ms": first_event,
            "open_streams": streams,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"machine: {report['machine']}; {args.rounds} rounds x {args.seconds}s, medians; "
              f"{len(PROMPT)}-byte prompt; LiteLLM {report['litellm_version']}; wrote {out}")
        print("| mock | scenario | c | req/s | vs direct | p50 ms | p99 ms | p99.9 ms | added p50 µs | added p99 µs | CPU/req | RSS MiB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            added = r.get("added_ms", {})
            fmt = lambda v, scale=1000: f"{v * scale:.0f}" if v is not None else "-"  # noqa: E731
            print(f"| {r['mock_latency_ms']} ms | {r['scenario']} | {r['concurrency']} | {r['rps']:.0f} | "
                  f"{r.get('throughput_vs_direct', 1.0):.2f} | {r['p50']:.3f} | {r['p99']:.3f} | {r['p99.9']:.3f} | "
                  f"{fmt(added.get('p50'))} | {fmt(added.get('p99'))} | "
                  f"{fmt(r.get('gateway_cpu_us_per_request'), 1)} µs | {fmt(r.get('gateway_rss_mib'), 1)} |")
        if ratios:
            print("| mock | c | Palisade | × LiteLLM's req/s | of LiteLLM's added p99 | of LiteLLM's RSS |")
            print("|---|---|---|---|---|---|")
            for q in ratios:
                frac = lambda v: f"1/{1 / v:.0f}" if v and v > 0 else "-"  # noqa: E731
                print(f"| {q['mock_latency_ms']} ms | {q['concurrency']} | {q['palisade']} | {q['rps_times']:.1f} | "
                      f"{frac(q['added_p99_fraction'])} | {frac(q['rss_fraction'])} |")
        fe = first_event
        print(f"stream time to first event ({n} sequential): direct p50 {fe['direct']['p50']:.3f} ms, "
              f"minimal p50 {fe['minimal']['p50']:.3f} ms p99 {fe['minimal']['p99']:.3f} ms; "
              f"added p50 {fe['added_ms']['p50'] * 1000:.0f} µs, p99 {fe['added_ms']['p99'] * 1000:.0f} µs")
        print(f"{streams['streams']} streams open at once through a fresh minimal gateway: RSS "
              f"{streams['rss_before_mib']:.1f} -> {streams['rss_with_streams_mib']:.1f} MiB, "
              f"{streams['kib_per_stream']:.1f} KiB per stream (opened in {streams['seconds_to_open']:.1f} s)")
        plot_with = venv_python or (peers.VENV / "bin" / "python")
        if Path(plot_with).exists():
            subprocess.run([plot_with, ROOT / "benchmarks" / "plots.py", out], check=True)
        else:
            print("no plots: the benchmarks' virtualenv is missing (run once without --no-litellm)")
    finally:
        stop(procs, work)


def mock_addr_first(targets, sweep):
    """The address of the mock that answers at once."""
    return targets[(next(iter(sweep)), "direct")][0].split("/")[2]


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
