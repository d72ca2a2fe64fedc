#!/usr/bin/env bash
# Statistics throughput on 1, 2 and 4 ranks and the ratio to one rank.
# usage: run_mpi_bench.sh BENCH [args for bench_mpi_statistics...]
set -euo pipefail
bench=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
base=""
for np in 1 2 4; do
  line=$(OPENBLAS_NUM_THREADS=1 bash "$here/../../tests/mpi/mpirun.sh" $np "$bench" "$@")
  tps=$(echo "$line" | sed -E 's/.*tokens\/s ([0-9.]+).*/\1/')
  [ -n "$base" ] || base=$tps
  echo "$line  ratio to 1 rank $(awk -v a="$tps" -v b="$base" 'BEGIN { printf "%.2f", a / b }')"
done
