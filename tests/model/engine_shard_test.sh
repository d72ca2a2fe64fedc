#!/usr/bin/env bash
# capture --shard i/N: three shards of one text, given in order to headrecon
# fit, give the plan of one capture bit for bit (same batches: --batch = the
# sequence length), and their tensors are the slices of the full capture's.
# With MPI (4th argument "mpi"), the same shards captured under mpirun with
# --shard mpi, and fitted on 3 ranks.
# usage: engine_shard_test.sh ENGINE FETCH_SCRIPT HEADRECON PLAN_COMPARE [mpi]
set -euo pipefail
engine=$(realpath "$1")
model=$(bash "$(realpath "$2")")
headrecon=$(realpath "$3")
compare=$(realpath "$4")
with_mpi=${5:-}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "engine_shard_test: FAIL: $*" >&2; exit 1; }
cd "$tmp"
for i in $(seq 1 40); do echo "Line $i: the quick brown fox $i jumps over the lazy dog number $((i * 7))."; done > text.txt
cap=(--model "$model" --text text.txt --tokens 300 --seq-len 100 --kinds k,v --threads 1)
"$engine" capture "${cap[@]}" --out full.safetensors > full.txt
for i in 0 1 2; do "$engine" capture "${cap[@]}" --shard $i/3 --out s{i}.safetensors > s$i.txt; done
grep -q "shard 0/3: tokens 0..99" s0.txt || fail "shard 0: $(cat s0.txt)"
grep -q "shard 1/3: tokens 100..199" s1.txt || fail "shard 1: $(cat s1.txt)"
grep -q "shard 2/3: tokens 200..299" s2.txt || fail "shard 2: $(cat s2.txt)"
fit=(--kind k --kind v --batch 100 --sink 4 --refs 2)
"$headrecon" fit --acts full.safetensors "${fit[@]}" --out full_plan.safetensors > fit_full.txt
"$headrecon" fit --acts s0.safetensors --acts s1.safetensors --acts s2.safetensors "${fit[@]}" \
  --out shard_plan.safetensors > fit_shards.txt
grep -q "300 tokens" fit_shards.txt || fail "the shards should hold 300 tokens: $(head -1 fit_shards.txt)"
"$compare" full_plan.safetensors shard_plan.safetensors || fail "shards give another plan than one capture"
diff <(grep "R2 held-out" fit_full.txt) <(grep "R2 held-out" fit_shards.txt) || fail "R2 differ"
if "$engine" capture "${cap[@]}" --shard 3/3 --out x.safetensors 2> err.txt; then fail "--shard 3/3 accepted"; fi
grep -q "0 <= i < N" err.txt || fail "--shard 3/3: $(cat err.txt)"
if "$engine" capture "${cap[@]}" --shard 0/8 --out x.safetensors 2> err.txt; then fail "an empty shard was accepted"; fi
grep -q "leave this shard empty" err.txt || fail "empty shard: $(cat err.txt)"
if [ "$with_mpi" = mpi ]; then
  bash "$here/../mpi/mpirun.sh" 3 "$engine" capture "${cap[@]}" --shard mpi --out m{i}.safetensors > /dev/null
  bash "$here/../mpi/mpirun.sh" 3 "$headrecon" fit --acts m0.safetensors --acts m1.safetensors --acts m2.safetensors \
    "${fit[@]}" --out mpi_plan.safetensors > /dev/null
  "$compare" full_plan.safetensors mpi_plan.safetensors --tol 1e-12 || fail "MPI capture + fit differ from one process"
fi
echo "engine shards: 3 shards = one capture (plan bit for bit)${with_mpi:+; under mpirun too}"
