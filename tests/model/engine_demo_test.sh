#!/usr/bin/env bash
# Smoke test of `headrecon-engine demo` at tiny sizes: every step runs
# (capture, R2 curves trained and random, a plan, eval through the
# reference-only cache, speed, report) and the report files are well formed.
# Text: the Linux docs when installed, else a small directory made here.
# usage: engine_demo_test.sh ENGINE FETCH_SCRIPT
set -euo pipefail
engine=$1
model=$(bash "$2")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "engine_demo_test: FAIL: $*" >&2; exit 1; }

docs=/usr/share/doc/linux-doc-6.1/html/_sources
suffix=.rst.txt
if [ ! -d "$docs" ]; then
  echo "engine_demo_test: $docs absent: using generated text" >&2
  docs=$tmp/docs suffix=.txt
  mkdir -p "$docs"
  for f in 1 2 3 4 5 6 7 8; do
    for i in $(seq 1 60); do echo "File $f line $i: the scheduler moves task $i to CPU $((i % 4)) when load rises."; done \
      > "$docs/f$f.txt"
  done
fi
"$engine" demo --model "$model" --dir "$tmp/out" --docs "$docs" --kjv "$tmp/none.txt" --calib-tokens 1024 \
  --random-tokens 1024 --seq-len 256 --eval-seqs 2 --eval-len 32 --max-k 2 --q-window 1 --plans greedy-same-r1,hybrid-w2-r1 \
  --speed-context 256 > "$tmp/demo.txt" 2>&1 || { tail -20 "$tmp/demo.txt"; fail "demo exited with an error"; }
out=$tmp/out
for f in summary.md r2.csv r2_heatmap.svg eval.csv eval.json eval.md demo.log plans/greedy-same-r1.safetensors; do
  [ -s "$out/$f" ] || fail "missing $f"
done
for s in "## R2 of each head" "### Held-out" "## Perplexity through the reference-only KV cache" "## Decode speed" \
         "| k | cross-layer (layers 0..l) | random |"; do
  grep -qF "$s" "$out/summary.md" || fail "summary.md lacks '$s'"
done
grep -qE '^\| greedy-same-r1 +\| f32 +\| K\+V' "$out/summary.md" || fail "summary.md lacks the greedy-same-r1 K+V row"
grep -qE '^\| hybrid-w2-r1 +\| f32 +\| K\+V' "$out/summary.md" || fail "summary.md lacks the hybrid-w2-r1 K+V row"
# r2.csv: trained and random, q/k/v, same- and cross-layer, k = 1..2 (K/V same-layer: 2 candidates).
[ "$(head -1 "$out/r2.csv")" = "model,kind,scope,layer,head,k,r2_heldout,r2_in_sample,refs" ] || fail "r2.csv header"
# per model: q same 270x2, q window 270x2, k/v same 90x2 each, k/v cross (layer 0: 2 candidates) 90x2 each
[ "$(tail -n +2 "$out/r2.csv" | wc -l)" = $(( 2 * (270 * 2 * 2 + 90 * 2 * 4) )) ] || fail "r2.csv rows: $(wc -l < "$out/r2.csv")"
head -c 5 "$out/r2_heatmap.svg" | grep -q "<svg" || fail "r2_heatmap.svg is not SVG"
[ "$(grep -c "<rect" "$out/r2_heatmap.svg")" -gt $(( 12 * 30 * 3 )) ] || fail "r2_heatmap.svg has too few cells"
# eval.csv: full + greedy-same-r1 K, V, K+V at sinks 0 and 4 + hybrid-w2-r1 K, V, K+V at sink 4;
# allocated bytes = layout bytes; measured = simulated ppl.
[ "$(wc -l < "$out/eval.csv")" = 11 ] || fail "eval.csv rows: $(cat "$out/eval.csv")"
awk -F, 'NR == 1 { for (i = 1; i <= NF; ++i) col[$i] = i; next } {
  al = $col["kv_bytes_allocated"]; la = $col["kv_bytes_layout"]; p = $col["ppl"]; sp = $col["simulated_ppl"]
  if (al != la) { print "row " NR ": allocated " al " != layout " la; bad = 1 }
  d = p - sp; if (d < 0) d = -d; if (sp == "" || d > 1e-3 * p) { print "row " NR ": ppl " p " vs simulated " sp; bad = 1 }
} END { exit bad }' "$out/eval.csv" || fail "eval.csv checks"
grep -q "demo wall time" "$tmp/demo.txt" || fail "no wall time"
echo "engine_demo_test: OK"
