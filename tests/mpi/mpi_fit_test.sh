#!/usr/bin/env bash
# mpirun -np N headrecon fit on 1, 2 and 4 ranks (--oversubscribe) against the
# single-process plan of the same files (three files; one file split by
# batches; strategy loss with the query statistics), and a malformed file on
# one rank (truncated; NaN data): every rank must exit with an error naming
# the file, none may hang (mpirun.sh kills after HEADRECON_MPI_TIMEOUT s).
# usage: mpi_fit_test.sh HEADRECON PLAN_COMPARE
set -euo pipefail
tool=$(realpath "$1")
compare=$(realpath "$2")
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export HEADRECON_MPI_TIMEOUT=120
fail() { echo "FAIL: $*" >&2; exit 1; }
cd "$tmp"
for i in 1 2 3; do
  "$tool" synth --out a$i.safetensors --layers 4 --heads 4 --dim 16 --tokens 3000 --seq-len 500 --seed $i \
    --projections wo$i.safetensors > /dev/null
done
mv wo1.safetensors wo.safetensors
"$tool" synth --out big.safetensors --layers 3 --heads 4 --dim 16 --tokens 12000 --seq-len 300 --seed 7 > /dev/null
files=(--acts a1.safetensors --acts a2.safetensors --acts a3.safetensors)

"$tool" fit "${files[@]}" --kind k --kind v --out one.safetensors --batch 256 > one.txt
"$tool" fit --acts big.safetensors --kind k --window 1 --out big1.safetensors --batch 500 > big1.txt
"$tool" fit "${files[@]}" --strategy loss --wo wo.safetensors --kind k --kind v --kv-budget 0.5 --out loss1.safetensors \
  --batch 700 > loss1.txt
grep -q "9000 tokens" one.txt || fail "the three files should form one stream of 9000 tokens: $(head -1 one.txt)"
for np in 1 2 4; do
  bash "$here/mpirun.sh" $np "$tool" fit "${files[@]}" --kind k --kind v --out np$np.safetensors --batch 256 > np$np.txt
  [ "$np" = 1 ] || grep -q "over $np MPI ranks" np$np.txt || fail "np=$np: no rank count in $(cat np$np.txt)"
  [ "$(grep -c 'plan written' np$np.txt)" = 1 ] || fail "np=$np: the plan should be written once"
  "$compare" one.safetensors np$np.safetensors --tol 1e-12 || fail "np=$np: plan differs from the single-process plan"
  bash "$here/mpirun.sh" $np "$tool" fit --acts big.safetensors --kind k --window 1 --out bignp$np.safetensors \
    --batch 500 > bignp$np.txt
  "$compare" big1.safetensors bignp$np.safetensors --tol 1e-12 || fail "np=$np: one file split by batches differs"
  bash "$here/mpirun.sh" $np "$tool" fit "${files[@]}" --strategy loss --wo wo.safetensors --kind k --kind v \
    --kv-budget 0.5 --out lossnp$np.safetensors --batch 700 > lossnp$np.txt
  "$compare" loss1.safetensors lossnp$np.safetensors --tol 1e-12 || fail "np=$np: strategy loss plan differs"
done
# Same statistics except for rounding: the R² tables agree to the printed digits.
diff <(grep -v "time:\|statistics\|plan written" one.txt) <(grep -v "time:\|statistics\|plan written" np4.txt) ||
  fail "np=4 report differs from one process"

# Malformed files on one rank: truncated (fails when opened) and NaN data
# (fails while accumulating). Every rank reports the file; none hangs.
cp a3.safetensors trunc.safetensors
truncate -s 100000 trunc.safetensors
cp a3.safetensors nan.safetensors
for off in 600000 2000000 4000000 6000000 8000000 10000000; do  # NaN (0xffffffff) in every tensor kind
  printf '\377%.0s' $(seq 1 4096) | dd of=nan.safetensors bs=1 seek=$off conv=notrunc status=none
done
for np in 1 2 4; do
  for bad in trunc nan; do
    rm -rf out
    if bash "$here/mpirun.sh" $np --output-filename out "$tool" fit --acts a1.safetensors --acts a2.safetensors \
      --acts $bad.safetensors --kind k --out bad.safetensors > /dev/null 2>&1; then
      fail "np=$np: $bad.safetensors was accepted"
    fi
    n=$(grep -l "error: .*$bad.safetensors" out/1/rank.*/stderr | wc -l)
    [ "$n" = "$np" ] || fail "np=$np, $bad: $n of $np ranks named the file: $(cat out/1/rank.*/stderr)"
    [ ! -e bad.safetensors ] || fail "np=$np, $bad: a plan was written"
  done
done
grep -h "error" out/1/rank.0/stderr
echo "mpi fit: plans on 1, 2, 4 ranks equal the single-process plans; malformed files fail on every rank"
