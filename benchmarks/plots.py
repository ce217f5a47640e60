"""Draws the suite's plots from its JSON result file. Runs in the
benchmarks' virtualenv (matplotlib), called by suite.py:

    benchmarks/.venv/bin/python benchmarks/plots.py benchmarks/results/suite.json

Writes, beside the JSON file: latency-cdf.png (the distribution of request
latency per scenario at concurrency 1 and 64, mock answering at once) and
throughput.png (requests per second against concurrency, per scenario).
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "direct": ("#777777", "-"),
    "minimal": ("#1f77b4", "-"),
    "direct-3k": ("#777777", "--"),
    "full": ("#d62728", "-"),
    "litellm": ("#ff7f0e", "-"),
}
LABEL = {
    "direct": "direct to the mock",
    "minimal": "Palisade, minimal policy",
    "direct-3k": "direct, 3.8 KiB prompt",
    "full": "Palisade, full pipeline (3.8 KiB prompt)",
    "litellm": "LiteLLM proxy",
}


def main(path):
    report = json.loads(Path(path).read_text())
    rows = [r for r in report["results"] if r["mock_latency_ms"] == 0]
    title = f"{report['machine']}, {report['date']}"
    out = Path(path).parent

    concurrencies = sorted({r["concurrency"] for r in rows})
    shown = [c for c in (1, 64) if c in concurrencies] or concurrencies[:1]
    fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4.5), squeeze=False)
    for ax, c in zip(axes[0], shown):
        for r in rows:
            if r["concurrency"] != c:
                continue
            points = sorted((float(p), ms) for p, ms in r["percentiles_ms"].items())
            color, dash = STYLE.get(r["scenario"], ("black", ":"))
            ax.plot([ms for _, ms in points], [p for p, _ in points], color=color, linestyle=dash,
                    label=LABEL.get(r["scenario"], r["scenario"]))
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("percentile")
        ax.set_ylim(0, 100)
        ax.set_title(f"concurrency {c}, mock answers at once")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Request latency distribution — {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "latency-cdf.png", dpi=100)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["scenario"] for r in rows):
        pts = sorted((r["concurrency"], r["rps"]) for r in rows if r["scenario"] == name)
        color, dash = STYLE.get(name, ("black", ":"))
        ax.plot([c for c, _ in pts], [v for _, v in pts], marker="o", color=color, linestyle=dash,
                label=LABEL.get(name, name))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
    ax.set_xlabel("concurrent connections")
    ax.set_ylabel("requests per second (log scale)")
    ax.set_title(f"Throughput against concurrency, mock answers at once\n{title}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=100)
    print(f"wrote {out / 'latency-cdf.png'} and {out / 'throughput.png'}")


if __name__ == "__main__":
    main(sys.argv[1])
