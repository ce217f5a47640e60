#!/usr/bin/env python3
"""Palisade's added latency against calling the provider directly.

Builds the release binary, starts the mock provider (`palisade mock`) and a
gateway in front of it, and drives both with wrk over 127.0.0.1 in the same
run, interleaving direct and gateway runs so that drift on a shared machine
hits both alike. Reports median p50/p90/p99 per scenario, the added latency
(gateway minus direct), throughput and the gateway's RSS.

    python3 benchmarks/overhead.py                 # full run (~2.5 min)
    python3 benchmarks/overhead.py --smoke         # a few seconds, proves the harness

Needs wrk (Debian package `wrk`; installed when missing if run as root). Writes benchmarks/results/overhead.json.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "palisade"
BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Hello, how are you today?"}]})

LUA = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def wait_file(path, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                pass
        if proc.poll() is not None:
            sys.exit(f"process exited early with {proc.returncode}")
        time.sleep(0.02)
    sys.exit(f"no ready file at {path}")


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_wrk(out):
    lat = {}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[f"p{pct}"] = float(value) * UNITS[unit]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"wrk saw errors:\n{out}")
    return {"rps": rps, "requests": reqs, **lat}


def wrk(url, script, conns, seconds):
    threads = 1 if conns == 1 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return parse_wrk(out)


def ttfb(addr, key, n):
    """Time from sending a streaming request to the first SSE event, over one
    keep-alive connection, n times. Returns sorted milliseconds."""
    import socket

    host, port = addr.rsplit(":", 1)
    body = json.dumps({"model": "bench", "stream": True, "messages": [{"role": "user", "content": "Hello"}]}).encode()
    req = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        sock.sendall(req)
        buf = b""
        first = None
        while not buf.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                sys.exit("connection closed during TTFB run")
            buf += chunk
            if first is None and b"data:" in buf:
                first = time.perf_counter() - start
        times.append(first * 1000)
    sock.close()
    return sorted(times)


def ensure_wrk():
    """Installs wrk from Debian's packages if it is missing and this is root
    on a machine with apt-get; otherwise says how to get it."""
    if shutil.which("wrk"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk (Debian's package)")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)
        return
    sys.exit("wrk not found: apt-get install wrk")


def prepare(args, prefix):
    """Installs wrk if missing, builds the release binary, makes a work directory and
    starts the mock provider in it. Returns (work, procs, mock address)."""
    if args.smoke:
        args.seconds, args.rounds = 1, 1
    ensure_wrk()
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "palisade"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix=prefix))
    mock_ready = work / "mock.json"
    mock = subprocess.Popen([BIN, "mock", "--listen", "127.0.0.1:0", "--ready-file", mock_ready], stderr=subprocess.DEVNULL)
    return work, [mock], wait_file(mock_ready, mock)["addr"]


def start_gateway(work, name, mock_addr, durability, extra, procs, log_level="info", wrap=(), binary=BIN):
    """A gateway in work/name in front of the mock, with `extra` config
    appended and a key for tenant `bench`, run by `binary` under the
    command `wrap` (a profiler) if given. Returns (process, proxy address,
    key)."""
    d = work / name
    d.mkdir()
    cfg = d / "palisade.toml"
    cfg.write_text(f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "{d / 'data'}"

[log]
level = "{log_level}"
format = "json"

[ledger]
durability = "{durability}"

[access]
environments = ["bench"]

[[providers]]
name = "mock"
kind = "openai"
base_url = "http://{mock_addr}/v1"

[[models]]
name = "bench"
provider = "mock"
{extra}""")
    created = subprocess.run([binary, "keys", "create", "--config", cfg, "--tenant", "bench", "--app", "wrk",
                              "--env", "bench", "--json"], check=True, capture_output=True, text=True).stdout
    key = json.loads(created)["key"]
    ready = d / "ready.json"
    gw = subprocess.Popen([*wrap, binary, "serve", "--config", cfg, "--ready-file", ready],
                          stderr=open(d / "gateway.log", "w"))
    procs.append(gw)
    return gw, wait_file(ready, gw, timeout=120 if wrap else 30)["proxy"], key


def stop(procs, work):
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
        # A process started in its own session (LiteLLM's gunicorn) may
        # leave workers behind: end its whole group.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="a few seconds, no figures worth quoting")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--log-level", default="info", help="the gateway's [log] level")
    ap.add_argument("--durability", default="strict", choices=["strict", "relaxed"], help="the ledger's durability")
    ap.add_argument("--only", choices=["1", "32"], help="run one concurrency only")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "overhead.json"))
    args = ap.parse_args()
    work, procs, mock_addr = prepare(args, "palisade-bench-")
    try:
        gateway, gw_addr, key = start_gateway(work, "gateway", mock_addr, args.durability, "", procs,
                                              log_level=args.log_level)
        time.sleep(0.5)
        idle_rss = rss_kib(gateway.pid)

        script = work / "post.lua"
        script.write_text(LUA.format(body=BODY, key=key))
        targets = {"direct": f"http://{mock_addr}/v1/chat/completions", "gateway": f"http://{gw_addr}/v1/chat/completions"}

        # Warm both paths.
        for url in targets.values():
            wrk(url, script, 4, 1)

        results = {}
        cpu = {}
        for conns in ((int(args.only),) if args.only else (1, 32)):
            runs = {"direct": [], "gateway": []}
            cpu_used, gw_requests = 0.0, 0
            for _ in range(args.rounds):
                for name, url in targets.items():
                    before = cpu_seconds(gateway.pid)
                    r = wrk(url, script, conns, args.seconds)
                    if name == "gateway":
                        cpu_used += cpu_seconds(gateway.pid) - before
                        gw_requests += r["requests"]
                    runs[name].append(r)
            med = {name: {k: statistics.median(run[k] for run in rs) for k in ("rps", "p50", "p75", "p90", "p99")} for name, rs in runs.items()}
            results[f"c{conns}"] = {
                **med,
                "added_ms": {k: med["gateway"][k] - med["direct"][k] for k in ("p50", "p90", "p99")},
                "throughput_ratio": med["gateway"]["rps"] / med["direct"]["rps"],
                "gateway_cpu_us_per_request": 1e6 * cpu_used / max(gw_requests, 1),
            }
        loaded_rss = rss_kib(gateway.pid)

        n = 50 if args.smoke else 500
        first_event = {}
        for name, addr in (("direct", mock_addr), ("gateway", gw_addr)):
            t = ttfb(addr, key, n)
            first_event[name] = {"p50": statistics.median(t), "p99": t[int(len(t) * 0.99) - 1]}
        first_event["added_ms"] = {k: first_event["gateway"][k] - first_event["direct"][k] for k in ("p50", "p99")}

        report = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
            "seconds_per_run": args.seconds,
            "rounds": args.rounds,
            "ledger_durability": args.durability,
            "idle_rss_mib": idle_rss / 1024,
            "rss_after_load_mib": loaded_rss / 1024,
            "scenarios": results,
            "stream_first_event_ms": first_event,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))

        print(f"machine: {report['machine']}; {args.rounds} rounds x {args.seconds}s per scenario, medians; ledger durability {args.durability}")
        print(f"gateway RSS: idle {report['idle_rss_mib']:.1f} MiB, after load {report['rss_after_load_mib']:.1f} MiB")
        print("| concurrency | path | req/s | p50 ms | p90 ms | p99 ms |")
        print("|---|---|---|---|---|---|")
        for c, r in results.items():
            for name in ("direct", "gateway"):
                m = r[name]
                print(f"| {c[1:]} | {name} | {m['rps']:.0f} | {m['p50']:.3f} | {m['p90']:.3f} | {m['p99']:.3f} |")
            a = r["added_ms"]
            print(f"| {c[1:]} | **added** | ratio {r['throughput_ratio']:.2f} | {a['p50']*1000:.0f} µs | {a['p90']*1000:.0f} µs | {a['p99']*1000:.0f} µs |")
            print(f"|   | gateway CPU per request | {r['gateway_cpu_us_per_request']:.0f} µs | | | |")
        fe = first_event
        print(f"stream time to first event (ms, {n} sequential): direct p50 {fe['direct']['p50']:.3f} p99 {fe['direct']['p99']:.3f}; "
              f"gateway p50 {fe['gateway']['p50']:.3f} p99 {fe['gateway']['p99']:.3f}; "
              f"added p50 {fe['added_ms']['p50']*1000:.0f} µs, p99 {fe['added_ms']['p99']*1000:.0f} µs")
    finally:
        stop(procs, work)


if __name__ == "__main__":
    main()
