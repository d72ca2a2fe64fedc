#!/usr/bin/env python3
"""PyTorch baseline for bench_cuda_decode_attention: one decode step of
torch.nn.functional.scaled_dot_product_attention over the same full cache
(Llama-3-8B layer: 32 query heads, 8 KV heads, head_dim 128, bf16), at the
same contexts and batches, timed with CUDA events; the device-to-device copy
bandwidth is measured in the same run, as in the C++ benchmark.

GQA without copying the cache: the 4 query heads of each KV head are laid out
as 4 query positions of that head (q: [B, 8, 4, 128], k/v: [B, 8, T, 128]),
no mask (a decode step sees every cached token). This is exact decode
attention and lets SDPA pick its fused (flash / memory-efficient) kernel.
Bytes read: the K and V caches, B*T*2*8*128*2.

  python3 sdpa_baseline.py [--contexts 4096,...] [--batches 1,4,16,64] [--min-ms 100] [--json FILE]
"""
import argparse
import json
import math

import torch
import torch.nn.functional as F

Q_HEADS, KV_HEADS, D = 32, 8, 128
G = Q_HEADS // KV_HEADS


def time_ms(fn, min_ms):
    fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    fn()
    e1.record()
    e1.synchronize()
    reps = max(5, min(2000, int(min_ms / max(e0.elapsed_time(e1), 1e-3))))
    e0.record()
    for _ in range(reps):
        fn()
    e1.record()
    e1.synchronize()
    return e0.elapsed_time(e1) / reps


def copy_gbps(nbytes=1 << 30):
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda").fill_(1)
    b = torch.empty_like(a)
    ms = time_ms(lambda: b.copy_(a), 200)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="4096,8192,16384,32768,65536,131072")
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--min-ms", type=float, default=100.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    contexts = [int(x) for x in args.contexts.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    dev = torch.cuda.get_device_properties(0)
    copy = copy_gbps()
    print(f"device: {dev.name}, torch {torch.__version__}; D2D copy {copy:.0f} GB/s (read + write)")
    print(f"{'context':>8} {'batch':>6} {'sdpa ms':>10} {'GB/s':>10} {'/copy':>8}")
    rows = []
    scale = 1.0 / math.sqrt(D)
    for T in contexts:
        for B in batches:
            cache_bytes = B * T * 2 * KV_HEADS * D * 2
            free, _ = torch.cuda.mem_get_info()
            if cache_bytes * 1.1 + (1 << 30) > free:
                print(f"{T:>8} {B:>6}   skipped: needs {cache_bytes / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
                continue
            k = torch.randn(B, KV_HEADS, T, D, dtype=torch.bfloat16, device="cuda")
            v = torch.randn(B, KV_HEADS, T, D, dtype=torch.bfloat16, device="cuda")
            q = torch.randn(B, KV_HEADS, G, D, dtype=torch.bfloat16, device="cuda")
            with torch.no_grad():
                ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale), args.min_ms)
            gbps = cache_bytes / (ms * 1e-3) / 1e9
            print(f"{T:>8} {B:>6} {ms:>10.3f} {gbps:>10.0f} {gbps / copy:>8.2f}")
            rows.append({"context": T, "batch": B, "sdpa_ms": ms, "sdpa_gbps": gbps})
            del k, v, q
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev.name, "torch": torch.__version__, "copy_gbps": copy, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
