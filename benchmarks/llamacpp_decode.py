#!/usr/bin/env python3
"""Decode tokens/s of llama.cpp (through llama-cpp-python) on a GGUF model:
the external baseline for headrecon-engine's decode speed (issue 11).

For every context length C, thread count and KV-cache type, a fresh context
of C + --decode positions is prefilled with C deterministic token ids (the
same formula as `headrecon-engine bench`: id_i = (7919 i + 17) mod n_vocab),
then --decode tokens are decoded one at a time (Llama.eval of one token,
synchronized). Reported per run: decode tokens/s from the total time of the
decode steps and from their median step (robust to a busy machine), and
prefill tokens/s; all wall clock, Python's overhead per step (tens of us)
included. llama.cpp's own perf counters stay 0 when no logits are read, so
they are not used. Prints a table, and JSON with --json.

Not a CI dependency; nothing of llama.cpp is in the repository. Build the
`llama-cpp-python` sdist in a virtual environment outside the repository,
with x86 flags chosen explicitly and no AMX (AMX instructions trap with
SIGILL in these VMs, see /work/shared/DESIGN.md section 5):

    python3 -m venv /work/llama-venv
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
      -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
      -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=1 \
      /work/llama-venv/bin/pip install --no-cache-dir llama-cpp-python==0.3.36

(about an hour at -j1 on a 2-core machine), then

    /work/llama-venv/bin/python benchmarks/llamacpp_decode.py \
        [--model ~/.cache/headrecon/models/SmolLM2-135M-Instruct.Q4_1.gguf] \
        [--contexts 1024,4096,8192] [--threads 1,2] [--caches f16,f16-fa,q8_0] \
        [--decode 64] [--json out.json]

Caches: f16 (flash attention off), f16-fa (on), q8_0 (K and V in q8_0; a
quantized V cache needs flash attention, so it is on).
"""

import argparse
import json
import os
import platform
import sys
import time


def default_model():
    base = os.environ.get("HEADRECON_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "headrecon")
    return os.path.join(base, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


CACHES = {
    # name: (type_k, type_v, flash_attn) with ggml type ids F16 = 1, Q8_0 = 8
    "f16": (1, 1, False),
    "f16-fa": (1, 1, True),
    "q8_0": (8, 8, True),
}


def run_one(llama_cpp, model, ctx_len, threads, cache, n_decode, n_batch):
    type_k, type_v, fa = CACHES[cache]
    llm = llama_cpp.Llama(
        model_path=model,
        n_ctx=ctx_len + n_decode,
        n_batch=n_batch,
        n_ubatch=n_batch,
        n_threads=threads,
        n_threads_batch=threads,
        type_k=type_k,
        type_v=type_v,
        flash_attn=fa,
        logits_all=False,
        verbose=False,
    )
    n_vocab = llm.n_vocab()
    ids = [(7919 * i + 17) % n_vocab for i in range(ctx_len + n_decode)]
    ctx = llm._ctx.ctx
    t0 = time.perf_counter()
    llm.eval(ids[:ctx_len])
    llama_cpp.llama_synchronize(ctx)
    prefill_s = time.perf_counter() - t0
    steps = []
    for i in range(n_decode):
        t0 = time.perf_counter()
        llm.eval([ids[ctx_len + i]])
        llama_cpp.llama_synchronize(ctx)
        steps.append(time.perf_counter() - t0)
    del llm
    steps_sorted = sorted(steps)
    median = steps_sorted[len(steps) // 2]
    return {
        "context": ctx_len,
        "threads": threads,
        "cache": cache,
        "type_k": type_k,
        "type_v": type_v,
        "flash_attn": fa,
        "decode_tokens": n_decode,
        "decode_tok_s": n_decode / sum(steps),
        "decode_tok_s_median": 1.0 / median,
        "prefill_tok_s": ctx_len / prefill_s,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--contexts", default="1024,4096,8192")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--caches", default="f16,f16-fa,q8_0")
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--batch", type=int, default=512, help="prefill batch (n_batch = n_ubatch)")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    a = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        sys.exit("llama_cpp is not importable: build llama-cpp-python as this script's docstring says, "
                 "and run it with that venv's python")
    if not os.path.exists(a.model):
        sys.exit(f"model {a.model} not found (examples/engine/fetch_model.sh fetches it)")
    contexts = [int(x) for x in a.contexts.split(",")]
    threads = [int(x) for x in a.threads.split(",")]
    caches = a.caches.split(",")
    for c in caches:
        if c not in CACHES:
            sys.exit(f"unknown cache '{c}' (known: {', '.join(CACHES)})")
    rows = []
    for ctx_len in contexts:
        for t in threads:
            for c in caches:
                r = run_one(llama_cpp, a.model, ctx_len, t, c, a.decode, a.batch)
                rows.append(r)
                print(f"context {ctx_len:6d}  threads {t}  cache {c:7s}  decode {r['decode_tok_s']:8.1f} tok/s "
                      f"(median step {r['decode_tok_s_median']:7.1f})  prefill {r['prefill_tok_s']:8.1f} tok/s",
                      flush=True)
    meta = {
        "llama_cpp_python": getattr(llama_cpp, "__version__", "?"),
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace"),
        "model": a.model,
        "machine": platform.machine(),
        "nproc": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
        "decode": a.decode,
    }
    print("\n| context | threads | cache | decode tok/s | decode tok/s (median step) | prefill tok/s |")
    print("|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['context']} | {r['threads']} | {r['cache']} | {r['decode_tok_s']:.1f} | "
              f"{r['decode_tok_s_median']:.1f} | {r['prefill_tok_s']:.1f} |")
    print(f"\nllama.cpp system info: {meta['system_info']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
