#!/usr/bin/env bash
# headrecon fit --window W: K/V references from layers l-W..l only; the
# statistics' memory is printed before they are allocated, and a limit they
# exceed (--max-memory) is an error that names the largest window that fits.
# usage: fit_window_test.sh HEADRECON
set -euo pipefail
tool=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
"$tool" synth --out "$tmp/a.safetensors" --layers 6 --heads 4 --dim 16 --tokens 4000 --seq-len 500 > /dev/null
"$tool" fit --acts "$tmp/a.safetensors" --kind k --kind v --window 1 --refs 3 --out "$tmp/p.safetensors" > "$tmp/w.txt"
grep -q "statistics of k (cross-layer window 1): .* [MG]iB per process" "$tmp/w.txt" || fail "no memory line: $(cat "$tmp/w.txt")"
grep -q "cross-layer window 1, ridge" "$tmp/w.txt" || fail "scope not reported"
# Every reference lies in the target's layer or the one before.
grep -E "^  [kv] [0-9]+\.[0-9]+ <-" "$tmp/w.txt" | while read -r _ t _ refs; do
  tl=${t%%.*}
  for r in ${refs%%R2*}; do
    rl=${r%%.*}
    [ "$rl" -le "$tl" ] && [ "$rl" -ge $((tl - 1)) ] || fail "reference $r of $t is outside the window"
  done
done
# Window 1 on 6 layers x 4 heads x 16: 2·12·(64² + 5·128²) + ... bytes; a
# limit between window 0 and window 1 names --window 0.
limit=3000000
if "$tool" fit --acts "$tmp/a.safetensors" --kind k --window 3 --max-memory $limit --out "$tmp/x.safetensors" \
  > "$tmp/o.txt" 2> "$tmp/e.txt"; then fail "a window beyond --max-memory was accepted"; fi
grep -q "statistics of k (cross-layer window 3): .* [MG]iB per process (limit" "$tmp/o.txt" ||
  fail "memory not printed before the error: $(cat "$tmp/o.txt")"
grep -q "need .* [MG]iB, more than the .* [MG]iB allowed .*the largest cross-layer window that fits is --window 0" \
  "$tmp/e.txt" || fail "error: $(cat "$tmp/e.txt")"
[ ! -e "$tmp/x.safetensors" ] || fail "a plan was written"
# Full cross-layer statistics over the same limit: the same error (the window that would fit).
if "$tool" fit --acts "$tmp/a.safetensors" --kind k --max-memory $limit --out "$tmp/x.safetensors" \
  > /dev/null 2> "$tmp/e.txt"; then fail "cross-layer beyond --max-memory was accepted"; fi
grep -q "the cross-layer statistics of k .* --window 0" "$tmp/e.txt" || fail "error: $(cat "$tmp/e.txt")"
if "$tool" fit --acts "$tmp/a.safetensors" --kind k --max-memory 1000 --out "$tmp/x.safetensors" \
  > /dev/null 2> "$tmp/e.txt"; then fail "a tiny limit was accepted"; fi
grep -q "not even a window of 0" "$tmp/e.txt" || fail "error: $(cat "$tmp/e.txt")"
if "$tool" fit --acts "$tmp/a.safetensors" --window 1 --same-layer --out "$tmp/x.safetensors" 2> "$tmp/e.txt"; then
  fail "--window with --same-layer accepted"; fi
grep -q "not both" "$tmp/e.txt" || fail "error: $(cat "$tmp/e.txt")"
echo "fit --window: references within the window, memory printed and checked"
