#!/usr/bin/env bash
# Runs every fuzz target (tests/fuzz/) for MINUTES minutes each, one after the
# other: libFuzzer with ASan + UBSan (leaks checked), at most 10 s and 2 GB per
# input. The corpus of each target grows in build/fuzz/corpus/<target>/
# (seeded from the tools' output, tests/fuzz/make_seeds.sh, and from
# tests/fuzz/regressions/<target>/); crashes land in build/fuzz/artifacts/<target>/
# -- fix the bug, then check the reproducer in under tests/fuzz/regressions/<target>/
# so that CI replays it. Prints executions, coverage (cov) and features (ft)
# per target.
# Usage: [JOBS=2] [HEADRECON_CLI=path/to/headrecon] scripts/fuzz.sh MINUTES [TARGET...]
#        (targets: safetensors plan activations json gguf tokenizer)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:?usage: scripts/fuzz.sh MINUTES [TARGET...]}"
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors plan activations json gguf tokenizer)
build=build/fuzz
cli="${HEADRECON_CLI:-$build/examples/headrecon_cli/headrecon}"  # any build of the tool makes the seeds
cmake --preset fuzz > /dev/null
cmake --build "$build" -j"${JOBS:-2}" --target $([ -n "${HEADRECON_CLI:-}" ] || echo headrecon_cli) \
  $(printf 'fuzz_%s ' "${targets[@]}")
seeds="$build/fuzz-seeds"
[ -d "$seeds/tokenizer" ] || bash tests/fuzz/make_seeds.sh "$cli" "$seeds"
mkdir -p "$build/logs"
summary=()
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t" artifacts="$build/artifacts/$t"
  mkdir -p "$corpus" "$artifacts" "tests/fuzz/regressions/$t"
  log="$build/logs/$t.log"
  echo "== fuzz_$t for $minutes min (log: $log)"
  rc=0
  "$build/tests/fuzz/fuzz_$t" "$corpus" "$seeds/$t" "tests/fuzz/regressions/$t" \
    -dict="tests/fuzz/dict/$t.dict" -max_total_time=$((minutes * 60)) -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb=2048 -detect_leaks=1 -print_final_stats=1 -artifact_prefix="$artifacts/" > "$log" 2>&1 || rc=$?
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
  cov=$(sed -nE 's/.* cov: ([0-9]+) .*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+) .*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([0-9]+\/[0-9a-zA-Z]+) .*/\1/p' <<<"$last")
  crashes=$(find "$artifacts" -type f | wc -l)
  summary+=("$(printf '%-12s exit %-3s executions %-10s cov %-6s ft %-7s corpus %-12s artifacts %s' \
    "$t" "$rc" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes")")
  echo "${summary[-1]}"
done
echo
echo "fuzz summary ($minutes min per target):"
printf '%s\n' "${summary[@]}"
