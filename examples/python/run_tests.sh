#!/usr/bin/env bash
# Tests of headrecon_capture (examples/python) in a virtual environment of
# their own: torch + transformers from PyPI as pinned in requirements-test.txt,
# then tests/test_capture.py (tiny random Llama/Qwen2/Mistral models built
# locally; nothing but PyPI is reached) with the headrecon tool for `fit`.
#
# Usage: run_tests.sh [--cli PATH/TO/headrecon] [--work DIR]
#   --cli   the headrecon tool (default: build/release/examples/headrecon_cli/headrecon,
#           built when absent); the fit checks need it
#   --work  where the venv goes (default: build/python-capture; about 4.3 GB)
# Wheels are kept in ${HEADRECON_WHEELS:-~/.cache/headrecon/wheels} (about 3 GB),
# so a second run downloads nothing. ctest runs this as `python_capture`
# (label python) only when HEADRECON_PYTHON_TESTS=1: it exits 77 (skipped)
# otherwise when given --ctest.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cli="" work="$root/build/python-capture" ctest=0
while [ $# -gt 0 ]; do
  case $1 in
    --cli) cli=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --ctest) ctest=1; shift ;;
    *) echo "run_tests.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$ctest" = 1 ] && [ "${HEADRECON_PYTHON_TESTS:-0}" != 1 ]; then
  echo "skipped: set HEADRECON_PYTHON_TESTS=1 to run (installs ~4.3 GB of torch + transformers from PyPI)"
  exit 77
fi
if [ -z "$cli" ]; then
  cli=$root/build/release/examples/headrecon_cli/headrecon
  if [ ! -x "$cli" ]; then
    (cd "$root" && cmake --preset release >/dev/null && cmake --build build/release --target headrecon_cli -j2)
  fi
fi
[ -x "$cli" ] || { echo "run_tests.sh: no headrecon tool at $cli" >&2; exit 1; }
cli=$(realpath "$cli")

req=$here/requirements-test.txt
wheels=${HEADRECON_WHEELS:-$HOME/.cache/headrecon/wheels}
mkdir -p "$work"
work=$(cd "$work" && pwd)
venv=$work/venv
stamp=$(sha256sum "$req" | cut -c1-16)
mkdir -p "$wheels"
if [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
  t0=$(date +%s)
  rm -rf "$venv"
  python3 -m venv "$venv"
  # Install offline from the kept wheels; download what is missing first.
  # --no-compile: Python compiles only what the tests import, once (halves the install time).
  install() { "$venv/bin/pip" install -q --no-compile --no-deps --no-index --find-links "$wheels" -r "$req"; }
  if ! install 2>/dev/null; then
    "$venv/bin/pip" download -q --no-deps -d "$wheels" -r "$req"
    t1=$(date +%s)
    echo "venv: downloaded the wheels in $((t1 - t0)) s ($(du -sh "$wheels" | cut -f1) in $wheels)"
    t0=$t1
    install
  fi
  echo "$stamp" > "$venv/.stamp"
  echo "venv: installed in $(($(date +%s) - t0)) s, $(du -sh "$venv" | cut -f1) in $venv"
fi

# Bytecode is written once, under WORK (this machine's environment may set
# PYTHONDONTWRITEBYTECODE: then every process would recompile torch and
# transformers, ~11 s of CPU each).
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=$work/pycache

# torch must run on its own libraries, not on a CUDA toolkit that happens to be
# installed on this machine (which would hide a library missing from the pins).
"$venv/bin/python" - "$venv" <<'EOF'
import re, sys, torch, transformers
venv = sys.argv[1]
libs = set(re.findall(r"(/\S+\.so[.\d]*)\n", open("/proc/self/maps").read()))
outside = sorted(l for l in libs if re.search(r"cuda|nvidia|cudnn|nccl", l) and not l.startswith(venv))
if outside:
    sys.exit(f"torch loaded CUDA libraries from outside the venv: {outside}")
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"{sum(1 for l in libs if l.startswith(venv))} libraries from the venv")
EOF

cd "$here"
HEADRECON_CLI=$cli PYTHONPATH=$here "$venv/bin/python" -m unittest discover -s tests -v
