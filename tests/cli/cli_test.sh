#!/usr/bin/env bash
# End-to-end checks of the headrecon tool: synth -> fit -> inspect on planted
# data, and that misuse fails with a non-zero exit and a message naming it.
# Usage: cli_test.sh PATH/TO/headrecon
set -u
tool="$1"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAILED: $*"; }
# expect_ok NAME REGEX CMD...: exit 0 and output matching REGEX
expect_ok() {
  local name=$1 re=$2; shift 2
  local out; out=$("$@" 2>&1); local rc=$?
  if [ $rc -eq 0 ] && grep -Eq -- "$re" <<<"$out"; then ok; else bad "$name (rc $rc)"; echo "$out" | tail -20; fi
}
# expect_fail NAME REGEX CMD...: non-zero exit and stderr matching REGEX
expect_fail() {
  local name=$1 re=$2; shift 2
  local err; err=$("$@" 2>&1 >/dev/null); local rc=$?
  if [ $rc -ne 0 ] && grep -Eq -- "$re" <<<"$err"; then ok; else bad "$name (rc $rc)"; echo "$err" | tail -5; fi
}

acts=$dir/acts.safetensors
expect_ok synth "wrote .*3 layers, 6000 tokens" \
  "$tool" synth --out "$acts" --layers 3 --heads 6 --q-per-kv 2 --dim 16 --tokens 6000 --seq-len 500 --noise 0.05 --dtype bf16
for strat in greedy shared random; do
  expect_ok "fit $strat" "mean held-out R2 \(k\): " \
    "$tool" fit --acts "$acts" --kind k --kind v --strategy $strat --refs 2 --out "$dir/$strat.plan" --sink 4
done
# Planted heads are found: greedy's held-out R2 is high and 50% of the KV cache is saved.
expect_ok "greedy quality" "mean held-out R2 \(v\): 0\.9[5-9]" \
  "$tool" fit --acts "$acts" --kind v --refs 2 --out "$dir/g.plan" --same-layer
# --fit-on-cache: the statistics see K/V as a q4_0 cache gives them back, so the
# held-out R2 drops below the exact fit's (4-bit rounding is noise in X and Y).
"$tool" synth --out "$dir/d32.safetensors" --layers 2 --heads 4 --dim 32 --tokens 3000 --seq-len 500 --noise 0.01 > /dev/null
r2_exact=$("$tool" fit --acts "$dir/d32.safetensors" --kind v --refs 2 --out "$dir/e.plan" | sed -n 's/^mean held-out R2 (v): //p')
r2_q4=$("$tool" fit --acts "$dir/d32.safetensors" --kind v --refs 2 --cache-dtype q4_0 --fit-on-cache --out "$dir/q.plan" |
        sed -n 's/^mean held-out R2 (v): //p')
if [ -n "$r2_exact" ] && [ -n "$r2_q4" ] && awk -v a="$r2_exact" -v b="$r2_q4" 'BEGIN { exit !(b < a - 0.005) }'; then
  ok
else
  bad "fit-on-cache q4_0 should lower the held-out R2 ($r2_exact exact, $r2_q4 on the cache)"
fi
expect_ok "kv saved" "KV cache saved: 18 of 36 K/V heads rebuilt = 50\.0%" \
  "$tool" fit --acts "$acts" --kind k --kind v --refs 2 --out "$dir/kv.plan"
expect_ok "budget 0.2 on 12 Q heads keeps round(2.4) = 2" "q: 3 layers x 12 heads.*keep 2, rebuild 10 per layer" \
  "$tool" fit --acts "$acts" --kind q --budget 0.2 --refs 2 --out "$dir/q.plan" --ridge 0
expect_ok "graph" "graph: edge threshold" \
  "$tool" fit --acts "$acts" --kind k --strategy graph --min-refs 2 --max-refs 2 --out "$dir/graph.plan"
expect_ok "fixed" "k 1\.5 <- 1\.0 1\.1" \
  "$tool" fit --acts "$acts" --kind k --strategy fixed --fixed "1.5=1.0,1.1" --out "$dir/fixed.plan"
expect_ok inspect "k: 6 heads/layer, 9 of 18 rebuilt" "$tool" inspect "$dir/greedy.plan"

# The bench command runs end to end (small sizes) and writes valid JSON.
expect_ok "bench --quick" "kernels and FMA peak on Highway target [A-Z0-9_]+, the CPU's best, through runtime dispatch" \
  "$tool" bench --quick --json "$dir/bench.json"
if python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert d['reconstruction'] and d['decode_attention']" "$dir/bench.json" 2>/dev/null; then ok; else bad "bench JSON"; fi
# The kernels run on the CPU's best target by default, on the build's with --static-kernels; the JSON says which.
expect_ok "bench --static-kernels" "kernels and FMA peak on this build's static Highway target" \
  "$tool" bench --quick --static-kernels --json "$dir/bench_static.json" --plot "$dir/bench_static.svg"
if python3 - "$dir/bench.json" "$dir/bench_static.json" <<'PY' 2>/dev/null; then ok; else bad "bench kernels in JSON"; fi
import json, sys
d, s = (json.load(open(f))["machine"] for f in sys.argv[1:3])
assert d["kernels"] == "dispatch" and s["kernels"] == "static", (d, s)
assert s["target"] == s["static_target"] == d["static_target"], (d, s)
assert d["target"] and d["fma_peak_gflops"] > 0 and s["fma_peak_gflops"] > 0
PY
# ... and the roofline plot next to the JSON: one panel per thread count (1 and 2), a roof and two points
# (full and absorbed) per decode-attention row, as well-formed SVG.
if python3 - "$dir/bench.json" "$dir/bench.roofline.svg" <<'PY' 2>/dev/null; then ok; else bad "bench roofline SVG"; fi
import json, sys, xml.etree.ElementTree as ET
rows = json.load(open(sys.argv[1]))["decode_attention"]
svg = ET.parse(sys.argv[2]).getroot()
ns = "{http://www.w3.org/2000/svg}"
assert len(svg.findall(f".//{ns}polyline")) == len({r["threads"] for r in rows}) == 2
labels = [t.text for t in svg.iter(f"{ns}text") if t.text and t.text.endswith("k") and " " in t.text]
assert len(labels) == 2 * len(rows), (len(labels), len(rows))
PY

expect_fail "missing file" "nope\.safetensors" "$tool" fit --acts "$dir/nope.safetensors" --out "$dir/x.plan"
expect_fail "bad kind" "unknown kind 'x'" "$tool" fit --acts "$acts" --kind x --out "$dir/x.plan"
expect_fail "bad budget" "budget must be in \(0, 1\]" "$tool" fit --acts "$acts" --budget 1.5 --out "$dir/x.plan"
expect_fail "bad ridge" "--ridge: 'abc' is not a number" "$tool" fit --acts "$acts" --ridge abc --out "$dir/x.plan"
expect_fail "unknown option" "not expected: .*--bogus" "$tool" fit --acts "$acts" --bogus 1 --out "$dir/x.plan"
expect_fail "missing out" "--out is required" "$tool" fit --acts "$acts"
expect_fail "bad strategy" "unknown strategy 'best'" "$tool" fit --acts "$acts" --strategy best --out "$dir/x.plan"
expect_fail "fixed bad spec" "expected '='" "$tool" fit --acts "$acts" --strategy fixed --fixed "1.5" --out "$dir/x.plan"
expect_fail "inspect activations" "format" "$tool" inspect "$acts"
head -c 100 "$dir/greedy.plan" > "$dir/trunc.plan"
expect_fail "inspect truncated" "trunc\.plan" "$tool" inspect "$dir/trunc.plan"
expect_fail "unknown command" "unknown command 'fitt'" "$tool" fitt
[ ! -e "$dir/x.plan" ] && ok || bad "a failed fit left a plan file behind"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
