#!/usr/bin/env python3
"""Perplexity of llama.cpp on the exact token sequences headrecon-engine
evaluates, for each KV-cache type: the external baseline of the quantized-
cache comparison (not a CI dependency).

    headrecon-engine eval ... --spread --seqs 8 --seq-len 512 --ids-out ids.txt
    python benchmarks/llamacpp_perplexity.py --model M.gguf --ids ids.txt \
        --cache f16,q8_0,q4_0 [--no-rotation] [--threads 2] [--json out.json]

Every position after the first of each sequence is scored by the logits of
the position before it, exactly as `headrecon-engine eval` does (no
half-window scoring as in llama-perplexity). Needs the `llama_cpp` module
(the llama-cpp-python sdist built in a venv outside the repository; on these
machines build ggml with -DGGML_NATIVE=OFF and no AMX, see DESIGN.md §5).
Recent llama.cpp rotates quantized K/V caches with a Hadamard transform by
default; --no-rotation sets LLAMA_ATTN_ROT_DISABLE=1 (read when the context
is made) to turn that off.
"""
import argparse
import json
import math
import os
import sys

import numpy as np

TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8}  # GGML_TYPE_*


def log_softmax_at(logits, target):
    row = np.asarray(logits, dtype=np.float64)
    m = row.max()
    return row[target] - m - math.log(np.exp(row - m).sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="one sequence of token ids per line")
    ap.add_argument("--cache", default="f16,q8_0,q4_0", help="comma-separated KV types (K and V alike)")
    ap.add_argument("--no-rotation", action="store_true", help="LLAMA_ATTN_ROT_DISABLE=1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    if a.no_rotation:
        os.environ["LLAMA_ATTN_ROT_DISABLE"] = "1"
    import llama_cpp  # after the environment is set

    seqs = [[int(t) for t in line.split()] for line in open(a.ids) if line.strip()]
    if not seqs:
        sys.exit(f"{a.ids}: no sequences")
    n_ctx = max(len(s) for s in seqs)
    results = []
    for name in a.cache.split(","):
        if name not in TYPES:
            sys.exit(f"unknown cache type '{name}' (expected one of {', '.join(TYPES)})")
        quantized = name not in ("f32", "f16")
        llm = llama_cpp.Llama(model_path=a.model, n_ctx=n_ctx, n_batch=n_ctx, n_threads=a.threads,
                              n_threads_batch=a.threads, logits_all=True, verbose=False,
                              type_k=TYPES[name], type_v=TYPES[name], flash_attn=quantized or None)
        nll, n = 0.0, 0
        for s in seqs:
            llm.reset()
            llm.eval(s)
            logits = llm.scores  # [n_ctx, n_vocab], rows of the evaluated positions
            for t in range(1, len(s)):
                nll -= log_softmax_at(logits[t - 1], s[t])
                n += 1
        ppl = math.exp(nll / n)
        results.append({"cache": name, "rotation": not a.no_rotation, "ppl": ppl, "predicted": n,
                        "sequences": len(seqs)})
        print(f"llama.cpp {llama_cpp.__version__} {name:5s} rotation {'off' if a.no_rotation else 'default'}: "
              f"ppl {ppl:.4f} over {n} predicted tokens", flush=True)
        del llm
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "ids": a.ids, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
