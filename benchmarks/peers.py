"""The peer the suite measures Palisade against, LiteLLM's proxy, and the
virtualenv both it and the plots live in.

LiteLLM runs as its production guide recommends for a VM: gunicorn with
one worker per core, a master key, spend and error logs off, debug logging
off, `LITELLM_LOG=ERROR`. It gets no database (the guide's batching and
pool settings only matter with one) and reads its model price map from its
own package rather than from GitHub, so that every byte of the run stays on
127.0.0.1.
"""

import hashlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from overhead import ROOT, rss_kib

VENV = ROOT / "benchmarks" / ".venv"
REQUIREMENTS = ROOT / "benchmarks" / "requirements.txt"
MASTER_KEY = "sk-palisade-bench-0000"


def python():
    """The virtualenv's interpreter, created and filled from
    requirements.txt when missing or when the requirements changed."""
    exe = VENV / "bin" / "python"
    stamp = VENV / ".requirements.sha256"
    want = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if exe.exists() and stamp.exists() and stamp.read_text() == want:
        return exe
    print(f"installing {REQUIREMENTS.name} into {VENV} (PyPI; about two minutes the first time)")
    subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([exe, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", REQUIREMENTS],
                   check=True)
    stamp.write_text(want)
    return exe


def version(exe, package):
    out = subprocess.run([exe, "-m", "pip", "show", package], check=True, capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Version:")), "?")


def start_litellm(work, name, mock_addr, port, procs, workers):
    """LiteLLM's proxy in front of the mock on 127.0.0.1:port. Returns
    (process, address, key) like overhead.start_gateway."""
    d = work / name
    d.mkdir()
    cfg = d / "config.yaml"
    cfg.write_text(f"""model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_key: mock-key
      api_base: http://{mock_addr}/v1
general_settings:
  master_key: {MASTER_KEY}
  disable_spend_logs: true
  disable_error_logs: true
litellm_settings:
  request_timeout: 600
  set_verbose: false
  json_logs: true
""")
    exe = VENV / "bin" / "litellm"
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    proc = subprocess.Popen([exe, "--config", cfg, "--host", "127.0.0.1", "--port", str(port),
                             "--num_workers", str(workers), "--run_gunicorn"],
                            cwd=d, env=env, stdout=open(d / "litellm.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    procs.append(proc)
    addr = f"127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"LiteLLM exited with {proc.returncode}; see {d / 'litellm.log'}")
        try:
            with urllib.request.urlopen(f"http://{addr}/health/liveliness", timeout=2) as r:
                if r.status == 200 and len(tree(proc.pid)) > workers:
                    return proc, addr, MASTER_KEY
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"LiteLLM did not answer within 180 s; see {d / 'litellm.log'}")


def tree(pid):
    """pid and all its descendants."""
    children = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_rss_kib(pid):
    total = 0
    for p in tree(pid):
        try:
            total += rss_kib(p)
        except OSError:
            pass
    return total


def tree_cpu_seconds(pid):
    """User and system time of pid and its descendants, living and reaped."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])
    return total / ticks
