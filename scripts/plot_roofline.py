#!/usr/bin/env python3
"""Roofline-style plot of `headrecon bench --json` results: each decode-
attention row (full cache and reference-only cache, per cache type and
thread count) at its arithmetic intensity (flop per byte read) and attained
GFLOP/s, under the roofs measured in the same run (DRAM read rate x
intensity, FMA peak), one panel per thread count.

    python3 scripts/plot_roofline.py bench.json roofline.svg

Needs matplotlib (Debian: python3-matplotlib).
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MARKERS = {"f32": "o", "bf16": "s", "q8_0": "^", "q4_0r": "v", "q4_0": "v", "q8_0r": "^", "f16": "D"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json")
    ap.add_argument("out")
    a = ap.parse_args()
    bench = json.load(open(a.json))
    rows = bench["decode_attention"]
    threads = sorted({r["threads"] for r in rows})
    fig, axes = plt.subplots(1, len(threads), figsize=(6.5 * len(threads), 5), squeeze=False)
    for ax, th in zip(axes[0], threads):
        sel = [r for r in rows if r["threads"] == th]
        dram, peak = sel[0]["dram_gbps"], sel[0]["fma_peak_gflops"]
        grid = [0.05 * 1.1 ** i for i in range(90)]
        ax.plot(grid, [min(peak, dram * x) for x in grid], color="black", lw=1.5,
                label=f"roof: DRAM {dram:.1f} GB/s, FMA peak {peak:.0f} GFLOP/s")
        for kind, color in (("full", "tab:blue"), ("absorbed", "tab:red")):
            for r in sel:
                inten = r[f"{kind}_flops"] / r[f"{kind}_bytes"]
                gflops = r[f"{kind}_flops"] / (r[f"{kind}_us"] * 1e3)
                ax.scatter(inten, gflops, color=color, marker=MARKERS.get(r["cache"], "x"), alpha=0.7)
                ax.annotate(f'{r["model"].split("-")[0]} {r["cache"]} {r["context"] // 1024}k', (inten, gflops),
                            textcoords="offset points", xytext=(3, 3), fontsize=6)
        ax.scatter([], [], color="tab:blue", label="full cache")
        ax.scatter([], [], color="tab:red", label="reference-only (absorbed)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("flop per byte of KV cache read")
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"decode attention, {th} thread(s) ({bench['machine']['target']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
