#!/usr/bin/env python3
"""KV bytes per token against perplexity, from `headrecon-engine eval --json`
files: the full cache in each cache type (quantization alone) and every plan
in each cache type (head reconstruction stacked on quantization), with the
lower-left (Pareto) front of each family drawn as a line.

    python3 scripts/plot_pareto.py OUT.svg EVAL.json [EVAL.json ...] [--title T]

Needs matplotlib (Debian: python3-matplotlib). Also prints each family's front.
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def front(points):
    """The points no other point beats on both axes (fewer bytes and lower ppl), by bytes."""
    best = []
    for p in sorted(points, key=lambda p: (p["bytes"], p["ppl"])):
        if not best or p["ppl"] < best[-1]["ppl"]:
            best.append(p)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("evals", nargs="+")
    ap.add_argument("--title", default="KV cache: bytes per token vs perplexity")
    a = ap.parse_args()
    rows = []
    for path in a.evals:
        for r in json.load(open(path))["rows"]:
            if r.get("same_as"):
                continue
            label = r["cache"] if r["plan"] == "full" else f'{r["plan"]} {r["applied"]} s{r["sink"]} {r["cache"]}'
            rows.append({"bytes": r["kv_bytes_per_token"], "ppl": r["ppl"], "full": r["plan"] == "full",
                         "label": label})
    if not rows:
        raise SystemExit("no rows")
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for full, name, color, marker in ((True, "full cache, quantized", "tab:blue", "o"),
                                      (False, "plan + quantized references", "tab:red", "s")):
        pts = [r for r in rows if r["full"] == full]
        if not pts:
            continue
        ax.scatter([p["bytes"] for p in pts], [p["ppl"] for p in pts], color=color, marker=marker, alpha=0.45)
        f = front(pts)
        ax.plot([p["bytes"] for p in f], [p["ppl"] for p in f], color=color, marker=marker, label=name)
        for p in f:
            ax.annotate(p["label"], (p["bytes"], p["ppl"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        print(f"{name} front:")
        for p in f:
            print(f'  {p["bytes"]:10.1f} bytes/token  ppl {p["ppl"]:.4f}  {p["label"]}')
    ax.set_xscale("log")
    ax.set_xlabel("KV bytes per token (all layers, K and V; sinks amortized)")
    ax.set_ylabel("perplexity")
    ax.set_title(a.title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
