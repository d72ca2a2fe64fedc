#!/usr/bin/env bash
# End-to-end test of the headrecon-engine tool on the real model:
# info, tokenize/detokenize, ppl, capture (text files and --ids), errors;
# with the headrecon tool: capture -> fit -> eval (reference-only cache).
# usage: engine_cli_test.sh ENGINE FETCH_SCRIPT HEADRECON
set -euo pipefail
engine=$1
model=$(bash "$2")
headrecon=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "engine_cli_test: FAIL: $*" >&2; exit 1; }

"$engine" info --model "$model" > "$tmp/info.txt"
grep -q "layers: 30" "$tmp/info.txt" || fail "info: layers"
grep -q "kv heads: 3" "$tmp/info.txt" || fail "info: kv heads"
grep -q "tensor types: F32 x61 Q4_1 x210 Q8_0 x1" "$tmp/info.txt" || fail "info: tensor types"

text='In the beginning God created the heaven and the earth. 1:2 And the earth was without form.'
# The engine's threads: greedy decoding gives the same text on 1 and 2 threads,
# with exact (f32) and 8-bit inputs.
g1=$("$engine" generate --model "$model" --prompt "$text" --n 12 --threads 1 2>/dev/null)
g2=$("$engine" generate --model "$model" --prompt "$text" --n 12 --threads 2 2>/dev/null)
[ -n "$g1" ] && [ "$g1" = "$g2" ] || fail "generate: --threads 1 gave '$g1', --threads 2 gave '$g2'"
g8=$("$engine" generate --model "$model" --prompt "$text" --n 12 --threads 2 --int8-inputs 2>/dev/null)
[ -n "$g8" ] || fail "generate --int8-inputs produced no text"
# Attention on the build's static target gives the same greedy text as runtime dispatch.
gs=$("$engine" generate --model "$model" --prompt "$text" --n 12 --threads 2 --static-attention 2>/dev/null)
[ "$gs" = "$g2" ] || fail "generate --static-attention gave '$gs', runtime dispatch '$g2'"
# So do the weight products (f32 inputs) on the build's static target.
gw=$("$engine" generate --model "$model" --prompt "$text" --n 12 --threads 2 --static-weights 2>/dev/null)
[ "$gw" = "$g2" ] || fail "generate --static-weights gave '$gw', runtime dispatch '$g2'"
"$engine" bench --model "$model" --seq-len 16 --decode 4 --threads 2 > "$tmp/bench.txt"
grep -Eq "^threads 2, kernels [A-Z0-9_]+( \(8-bit inputs [A-Z0-9_]+\))?, attention [A-Z0-9_]+" "$tmp/bench.txt" ||
  fail "bench: $(cat "$tmp/bench.txt")"
"$engine" bench --model "$model" --seq-len 16 --decode 4 --threads 2 --static-weights > "$tmp/bench_static.txt"
grep -Eq "^threads 2, kernels [A-Z0-9_]+, attention [A-Z0-9_]+" "$tmp/bench_static.txt" ||
  fail "bench --static-weights: $(cat "$tmp/bench_static.txt")"
ids=$("$engine" tokenize --model "$model" --string "$text")
[ "$("$engine" detokenize --model "$model" --ids "$ids")" = "$text" ] || fail "tokenize/detokenize round trip"

# Two documents in a directory: the calib split takes a.txt, eval takes b.txt.
mkdir -p "$tmp/docs"
for i in 1 2 3 4 5 6; do echo "$text The number is $i and the word is word$i."; done > "$tmp/docs/a.txt"
for i in 1 2 3 4 5 6; do echo "int f$i(void) { return $i * 2; } /* helper $i */"; done > "$tmp/docs/b.txt"
"$engine" ppl --model "$model" --text-dir "$tmp/docs" --split eval --tokens 100 --seq-len 64 \
  --ids-out "$tmp/ids.txt" > "$tmp/ppl.txt"
grep -q "perplexity: " "$tmp/ppl.txt" || fail "ppl output"
grep -q "split eval (1 files" "$tmp/ppl.txt" || fail "ppl: eval split should hold 1 file"
[ "$(wc -w < "$tmp/ids.txt")" = 100 ] || fail "ppl --ids-out should hold 100 ids"
# Without --split, capture takes the calibration files.
"$engine" capture --model "$model" --text-dir "$tmp/docs" --tokens 80 --seq-len 40 --kinds q \
  --out "$tmp/calib.safetensors" > "$tmp/cal.txt"
grep -q "split calib (1 files" "$tmp/cal.txt" || fail "capture should default to the calib split"

"$engine" capture --model "$model" --text "$tmp/docs/a.txt" --text "$tmp/docs/b.txt" --tokens 150 \
  --seq-len 64 --kinds k,v --dtype bf16 --out "$tmp/acts.safetensors" > "$tmp/cap.txt"
grep -q "150 tokens in 3 sequences" "$tmp/cap.txt" || fail "capture summary: $(cat "$tmp/cap.txt")"
[ -s "$tmp/acts.safetensors" ] || fail "capture wrote no file"
"$engine" capture --model "$model" --ids "$ids" --tokens 10 --pre-rope --out "$tmp/ids.safetensors" > /dev/null
[ -s "$tmp/ids.safetensors" ] || fail "capture --ids wrote no file"

# capture -> headrecon fit -> eval through the reference-only cache.
for i in $(seq 1 40); do echo "Line $i: the scheduler picks task $i from runqueue $((i % 4)) and updates its clock."; done \
  > "$tmp/docs/c.txt"
"$engine" capture --model "$model" --text "$tmp/docs/c.txt" --text "$tmp/docs/a.txt" --tokens 768 --seq-len 256 \
  --kinds k,v --out "$tmp/kv.safetensors" > /dev/null
"$headrecon" fit --acts "$tmp/kv.safetensors" --kind k --kind v --strategy greedy --budget 0.67 --refs 2 \
  --same-layer --sink 4 --out "$tmp/plan.safetensors" > "$tmp/fit.txt"
grep -q "60 of 180 K/V heads rebuilt" "$tmp/fit.txt" || fail "fit: $(tail -3 "$tmp/fit.txt")"
"$engine" eval --model "$model" --text "$tmp/docs/b.txt" --seqs 1 --seq-len 32 --plan "p=$tmp/plan.safetensors" \
  --sinks 4 --variants k,kv --simulate --csv "$tmp/eval.csv" --json "$tmp/eval.json" > "$tmp/eval.txt"
grep -q "^full " "$tmp/eval.txt" || fail "eval: no full-cache row: $(cat "$tmp/eval.txt")"
[ "$(wc -l < "$tmp/eval.csv")" = 4 ] || fail "eval.csv should hold a header and 3 rows: $(cat "$tmp/eval.csv")"
# Every row: allocated bytes = the layout's; measured ppl = simulated ppl; finite.
awk -F, 'NR == 1 { for (i = 1; i <= NF; ++i) col[$i] = i; next } {
  al = $col["kv_bytes_allocated"]; la = $col["kv_bytes_layout"]; p = $col["ppl"]; sp = $col["simulated_ppl"]
  if (al != la) { print "row " NR ": allocated " al " != layout " la; bad = 1 }
  if (p + 0 <= 1 || p + 0 > 1e6) { print "row " NR ": ppl " p; bad = 1 }
  d = p - sp; if (d < 0) d = -d; if (sp == "" || d > 1e-3 * p) { print "row " NR ": ppl " p " vs simulated " sp; bad = 1 }
} END { exit bad }' "$tmp/eval.csv" || fail "eval.csv checks"
# K+V with 1 of 3 KV heads rebuilt: 4 sinks x 180 heads + 28 x 120 heads, 64 floats each.
grep -q "^p,f32,K+V,4,30,30,90,.*,$(( (4 * 180 + 28 * 120) * 64 * 4 )),$(( (4 * 180 + 28 * 120) * 64 * 4 )),$(( 32 * 180 * 64 * 4 ))," \
  "$tmp/eval.csv" || fail "eval.csv K+V bytes: $(cat "$tmp/eval.csv")"
grep -q '"kv_bytes_layout"' "$tmp/eval.json" || fail "eval.json"
if "$engine" eval --model "$model" --ids "1 2 3 4" --seqs 1 --seq-len 4 --plan "$tmp/kv.safetensors" 2> "$tmp/err.txt"; then
  fail "an activations file is not a plan"
fi
grep -q "error:" "$tmp/err.txt" || fail "eval: bad plan message"

# The loss strategy under a whole-model budget: capture with the output
# projections, fit at 67% of the KV bytes (round(0.67 x 180) = 121 head
# streams), eval allocates exactly that; the direct probe of the plan
# calibrates a second fit.
"$engine" capture --model "$model" --text "$tmp/docs/c.txt" --text "$tmp/docs/a.txt" --tokens 768 --seq-len 256 \
  --out "$tmp/qkv.safetensors" --projections "$tmp/wo.safetensors" > "$tmp/capw.txt"
grep -q "output projections of 30 layers" "$tmp/capw.txt" || fail "capture --projections: $(cat "$tmp/capw.txt")"
"$headrecon" fit --acts "$tmp/qkv.safetensors" --wo "$tmp/wo.safetensors" --kind k --kind v --strategy loss \
  --kv-budget 0.67 --refs 2 --sink 4 --out "$tmp/loss.safetensors" > "$tmp/fitl.txt" ||
  fail "fit --strategy loss: $(tail -3 "$tmp/fitl.txt")"
grep -q "stored 30976 of 46080 (67.2%)" "$tmp/fitl.txt" || fail "fit loss bytes: $(grep bytes "$tmp/fitl.txt")"
"$engine" eval --model "$model" --text "$tmp/docs/b.txt" --seqs 1 --seq-len 32 --plan "l=$tmp/loss.safetensors" \
  --sinks 4 --variants kv --csv "$tmp/evall.csv" > /dev/null || fail "eval of the loss plan"
grep -q "^l,f32,K+V,4,.*,$(( (4 * 180 + 28 * 121) * 64 * 4 )),$(( (4 * 180 + 28 * 121) * 64 * 4 ))," "$tmp/evall.csv" ||
  fail "loss plan bytes: $(cat "$tmp/evall.csv")"
"$engine" probe --model "$model" --plan "$tmp/loss.safetensors" --text-dir "$tmp/docs" --seqs 1 --seq-len 32 \
  --out "$tmp/probe.csv" > "$tmp/probe.txt" || fail "probe: $(tail -3 "$tmp/probe.txt")"
[ "$(wc -l < "$tmp/probe.csv")" -gt 2 ] || fail "probe.csv: $(cat "$tmp/probe.csv")"
"$headrecon" fit --acts "$tmp/qkv.safetensors" --wo "$tmp/wo.safetensors" --kind k --kind v --strategy loss \
  --kv-budget 0.67 --refs 2 --sink 4 --probe "$tmp/probe.csv" --out "$tmp/loss2.safetensors" > "$tmp/fitp.txt" ||
  fail "fit --probe: $(tail -3 "$tmp/fitp.txt")"
grep -q "groups calibrate the costs" "$tmp/fitp.txt" || fail "fit --probe: $(head -5 "$tmp/fitp.txt")"
# A hybrid plan (kept heads + latent streams, plan format 2) at 50% of the KV
# bytes: the store projects the latent streams at append time; the measured
# perplexity equals the simulated one (latent streams computed from the full
# cache's exact K/V), and the store allocates exactly 90 streams per token.
"$headrecon" fit --acts "$tmp/qkv.safetensors" --wo "$tmp/wo.safetensors" --kind k --kind v --strategy hybrid \
  --kv-budget 0.5 --same-layer --sink 4 --out "$tmp/hybrid.safetensors" > "$tmp/fith.txt" ||
  fail "fit --strategy hybrid: $(tail -3 "$tmp/fith.txt")"
grep -q "stored 23040 of 46080 (50.0%), read per decode step 23040 " "$tmp/fith.txt" ||
  fail "fit hybrid bytes: $(grep bytes "$tmp/fith.txt")"
# The same budget with --window 2: the maps also read the 2 previous layers' streams (latent ones included).
"$headrecon" fit --acts "$tmp/qkv.safetensors" --wo "$tmp/wo.safetensors" --kind k --kind v --strategy hybrid \
  --kv-budget 0.5 --window 2 --sink 4 --out "$tmp/hybridw.safetensors" > "$tmp/fithw.txt" ||
  fail "fit --strategy hybrid --window 2: $(tail -3 "$tmp/fithw.txt")"
grep -q "stored 23040 of 46080 (50.0%), read per decode step [3-9][0-9]\{4\} " "$tmp/fithw.txt" ||
  fail "fit hybrid window bytes: $(grep bytes "$tmp/fithw.txt")"
"$engine" eval --model "$model" --text "$tmp/docs/b.txt" --seqs 1 --seq-len 32 --plan "h=$tmp/hybrid.safetensors" \
  --plan "hw=$tmp/hybridw.safetensors" --sinks 4 --variants k,v,kv --simulate --csv "$tmp/evalh.csv" > "$tmp/evalh.txt" ||
  fail "eval of the hybrid plans"
awk -F, 'NR == 1 { for (i = 1; i <= NF; ++i) col[$i] = i; next } {
  p = $col["ppl"]; sp = $col["simulated_ppl"]; d = p - sp; if (d < 0) d = -d
  if (sp == "" || d > 1e-3 * p) { print "row " NR ": ppl " p " vs simulated " sp; bad = 1 }
} END { exit bad }' "$tmp/evalh.csv" || fail "hybrid plan: measured != simulated: $(cat "$tmp/evalh.csv")"
grep -q "^h,f32,K+V,4,.*,$(( (4 * 180 + 28 * 90) * 64 * 4 )),$(( (4 * 180 + 28 * 90) * 64 * 4 ))," "$tmp/evalh.csv" ||
  fail "hybrid plan bytes: $(cat "$tmp/evalh.csv")"

# Errors are reported, not crashed on.
if "$engine" capture --model "$model" --ids "1 2 3" --tokens 10 --out "$tmp/x.safetensors" 2> "$tmp/err.txt"; then
  fail "asking for more tokens than given should fail"
fi
grep -q "error:" "$tmp/err.txt" || fail "error message missing"
if "$engine" info --model "$tmp/docs/a.txt" 2> "$tmp/err.txt"; then fail "a text file is not a model"; fi
grep -q "not a GGUF file" "$tmp/err.txt" || fail "bad-model message: $(cat "$tmp/err.txt")"
echo "engine_cli_test: OK"
