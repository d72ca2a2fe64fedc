#!/usr/bin/env bash
# headrecon fit: whole-model KV budgets (stored and read bytes reported and
# met exactly), the loss-aware strategy, honest R2 labels, deliberate BLAS
# threads, and the messages issue 13 asked for.
# Usage: fit_budget_test.sh PATH/TO/headrecon
set -u
tool="$1"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAILED: $*"; }
expect_ok() {
  local name=$1 re=$2; shift 2
  local out; out=$("$@" 2>&1); local rc=$?
  if [ $rc -eq 0 ] && grep -Eq -- "$re" <<<"$out"; then ok; else bad "$name (rc $rc)"; echo "$out" | tail -20; fi
}
expect_fail() {
  local name=$1 re=$2; shift 2
  local err; err=$("$@" 2>&1 >/dev/null); local rc=$?
  if [ $rc -ne 0 ] && grep -Eq -- "$re" <<<"$err"; then ok; else bad "$name (rc $rc)"; echo "$err" | tail -5; fi
}

acts=$dir/acts.safetensors wo=$dir/wo.safetensors
expect_ok synth "wrote .*wo\.safetensors: random output projections" \
  "$tool" synth --out "$acts" --projections "$wo" --layers 4 --heads 4 --q-per-kv 2 --dim 8 --tokens 4096 --seq-len 256
# 4 layers x 4 KV heads x 2 kinds = 32 streams; 0.67 keeps round(21.44) = 21: 21 x 8 x 4 = 672 bytes.
for strat in greedy loss shared graph random; do
  expect_ok "kv-budget $strat" "stored 672 of 1024 \(65\.6%\)" \
    "$tool" fit --acts "$acts" --wo "$wo" --kind k --kind v --strategy $strat --kv-budget 0.67 --min-refs 2 \
    --max-refs 3 --sink 4 --out "$dir/$strat.plan"
done
expect_ok "inspect budget plan" "rebuilt" "$tool" inspect "$dir/loss.plan"
# Latent and hybrid plans: the budget met exactly in streams (heads + latent), reads = stores.
for strat in latent hybrid; do
  expect_ok "kv-budget $strat" "stored 672 of 1024 \(65\.6%\), read per decode step 672 " \
    "$tool" fit --acts "$acts" --kind k --kind v --strategy $strat --kv-budget 0.67 --same-layer --out "$dir/$strat.plan"
done
# --window 1: the same stored bytes, each layer also reads the previous layer's streams.
expect_ok "hybrid window" "stored 672 of 1024 \(65\.6%\), read per decode step (8[0-9][0-9]|1[0-9][0-9][0-9]) " \
  "$tool" fit --acts "$acts" --kind k --kind v --strategy hybrid --kv-budget 0.67 --window 1 --out "$dir/hw.plan"
expect_ok "inspect hybrid window" "<- [0-9.z ]*[0-9]+\.z?[0-9]+ .*\(R2" "$tool" inspect "$dir/hw.plan"
expect_fail "latent scope" "give --same-layer .* or --window W" \
  "$tool" fit --acts "$acts" --kind k --kind v --strategy latent --kv-budget 0.5 --out "$dir/x.plan"
expect_ok "latent weighted by the loss" "loss-weighted principal directions" \
  "$tool" fit --acts "$acts" --wo "$wo" --kind k --kind v --strategy latent --kv-budget 0.5 --same-layer --out "$dir/lw.plan"
expect_ok "inspect latent plan" "latent streams \(zJ" "$tool" inspect "$dir/latent.plan"
expect_ok "inspect latent refs" "<- [0-9]+\.z0" "$tool" inspect "$dir/latent.plan"
expect_fail "latent needs a model budget" "strategy latent allocates a whole-model budget" \
  "$tool" fit --acts "$acts" --kind k --kind v --strategy latent --out "$dir/x.plan"
expect_fail "latent budget too small" "below one stream per layer and kind \(8\)" \
  "$tool" fit --acts "$acts" --kind k --kind v --strategy latent --kv-budget 0.2 --same-layer --out "$dir/x.plan"
expect_fail "latent has no read budget" "drop --read-budget" \
  "$tool" fit --acts "$acts" --kind k --kind v --strategy hybrid --kv-budget 0.5 --read-budget 0.6 --same-layer --out "$dir/x.plan"
# Bytes per token: 448 f16 bytes = 28 streams of 8 x 2 bytes.
expect_ok "kv-bytes f16" "stored 448 of 512" \
  "$tool" fit --acts "$acts" --kind k --kind v --kv-bytes 448 --cache-dtype f16 --out "$dir/b.plan"
# A read bound as tight as the stored one: reads equal stores.
expect_ok "read budget" "stored 768 of 1024 \(75\.0%\), read per decode step 768 " \
  "$tool" fit --acts "$acts" --kind k --kind v --strategy greedy --kv-budget 0.75 --read-budget 0.75 --out "$dir/r.plan"
# Only K fitted: V stays cached and counts toward the budget (16 + 5 = 21 streams).
expect_ok "kv-budget one kind" "k: .*whole-model KV budget \(11 of 16 rebuilt\)" \
  "$tool" fit --acts "$acts" --kind k --kv-budget 0.67 --out "$dir/k.plan"
expect_ok "loss per layer" "budget 0\.50 \(keep 2, rebuild 2 per layer\).*" \
  "$tool" fit --acts "$acts" --wo "$wo" --kind k --kind v --strategy loss --out "$dir/lp.plan"
expect_ok "default split" "held-out split: 0\.25 of whole sequences" \
  "$tool" fit --acts "$acts" --out "$dir/s.plan"
expect_ok "threads" "BLAS threads: 2 for the statistics, 1 for selection" \
  "$tool" fit --acts "$acts" --threads 2 --out "$dir/t.plan"
# No held-out tokens: the labels say in-sample.
expect_ok "in-sample labels" "mean in-sample R2 \(k\)" "$tool" fit --acts "$acts" --holdout 0 --out "$dir/i.plan"
out=$("$tool" fit --acts "$acts" --holdout 0 --out "$dir/i.plan" 2>&1)
if grep -q "held-out R2" <<<"$out"; then bad "in-sample fit mentions held-out R2"; else ok; fi
# Two tokens fit in well under a second (selection runs on one BLAS thread).
"$tool" synth --out "$dir/two.safetensors" --tokens 2 --seq-len 2 >/dev/null
start=$(date +%s%N)
expect_ok "2-token fit" "mean in-sample R2" "$tool" fit --acts "$dir/two.safetensors" --out "$dir/two.plan"
ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ $ms -lt 5000 ] && ok || bad "2-token fit took $ms ms"

expect_fail "loss needs wo" "strategy loss needs --wo" \
  "$tool" fit --acts "$acts" --kind k --kind v --strategy loss --kv-budget 0.5 --out "$dir/x.plan"
expect_fail "sink names itself" "only 0 of 4096 tokens are at positions >= --sink 2000 \(the largest position is 255\)" \
  "$tool" fit --acts "$acts" --sink 2000 --out "$dir/x.plan"
expect_fail "seed as given" "--seed: 99999999999999999999 is outside" \
  "$tool" synth --out "$dir/x.safetensors" --seed 99999999999999999999
expect_fail "budget and kv-budget" "not both" \
  "$tool" fit --acts "$acts" --budget 0.5 --kv-budget 0.5 --out "$dir/x.plan"
expect_fail "kv-budget range" "--kv-budget must be a fraction in \(0, 1\]" \
  "$tool" fit --acts "$acts" --kv-budget 1.5 --out "$dir/x.plan"
expect_fail "kv-budget too small for shared" "do not fit" \
  "$tool" fit --acts "$acts" --kind k --kind v --strategy shared --kv-budget 0.1 --out "$dir/x.plan"
expect_fail "read below stored" "read budget .* is below the stored budget" \
  "$tool" fit --acts "$acts" --kind k --kind v --kv-budget 0.75 --read-budget 0.5 --out "$dir/x.plan"
expect_fail "out names acts" "--out .* names the input file" "$tool" fit --acts "$acts" --out "$acts"
expect_fail "kind twice" "--kind k is given twice" "$tool" fit --acts "$acts" --kind k --kind k --out "$dir/x.plan"
[ ! -e "$dir/x.plan" ] && ok || bad "a failed fit left a plan file behind"
expect_ok "synth 2 heads" "planted: none for K/V" "$tool" synth --out "$dir/h2.safetensors" --heads 2 --tokens 100
expect_ok "synth 3 heads" "planted: in every layer and kind, head 2 \(K/V\) is a linear map" \
  "$tool" synth --out "$dir/h3.safetensors" --heads 3 --tokens 100

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
