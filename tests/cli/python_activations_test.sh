#!/usr/bin/env bash
# An activations file written from Python exactly as the README's "Files"
# section describes it (json + struct, only the required metadata: format and
# post_rope) is accepted by `headrecon fit`, and one without post_rope is
# rejected with a message naming the key.
# Usage: python_activations_test.sh PATH/TO/headrecon
set -euo pipefail
tool="$1"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" <<'PY'
import json, math, random, struct, sys
out = sys.argv[1]
T, H, D, L = 600, 3, 4, 2
random.seed(1)
def tensor(layer, kind):
    vals = []
    for t in range(T):
        base = [random.gauss(0, 1) for _ in range(D)]
        heads = [base, [2 * x + 0.01 * random.gauss(0, 1) for x in base], [random.gauss(0, 1) for _ in range(D)]]
        for h in heads:
            vals.extend(h)
    return struct.pack("<%df" % len(vals), *vals)
def write(path, meta):
    tensors, data = {}, b""
    for layer in range(L):
        for kind in ("k", "v"):
            blob = tensor(layer, kind)
            tensors["layers.%d.%s" % (layer, kind)] = {"dtype": "F32", "shape": [T, H, D],
                                                       "data_offsets": [len(data), len(data) + len(blob)]}
            data += blob
    header = json.dumps(dict({"__metadata__": meta}, **tensors)).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data)
write(out + "/acts.safetensors", {"format": "headrecon.activations", "post_rope": "true"})
write(out + "/no_rope.safetensors", {"format": "headrecon.activations"})
PY
out=$("$tool" fit --acts "$dir/acts.safetensors" --kind k --kind v --refs 1 --budget 0.67 --out "$dir/plan.safetensors" 2>&1) \
  || { echo "FAILED: fit on the Python-written file"; echo "$out"; exit 1; }
grep -Eq "mean (held-out|in-sample) R2 \(k\): (0\.99|1\.00)" <<<"$out" || { echo "FAILED: expected a near-perfect fit"; echo "$out"; exit 1; }
"$tool" inspect "$dir/plan.safetensors" > /dev/null
if err=$("$tool" fit --acts "$dir/no_rope.safetensors" --kind k --out "$dir/x.safetensors" 2>&1); then
  echo "FAILED: a file without post_rope was accepted"; exit 1
fi
grep -q "missing metadata key 'post_rope'" <<<"$err" || { echo "FAILED: message: $err"; exit 1; }
[ ! -e "$dir/x.safetensors" ] || { echo "FAILED: a failed fit left a plan behind"; exit 1; }
echo "python-written activations: ok"
