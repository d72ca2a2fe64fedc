"""Writes the activation files of bad_input_test.sh (json + struct only).

Usage: make_bad_inputs.py DIR. Each file is a headrecon activations file as
the README's "Files" section describes it, with one thing wrong or extreme.
"""
import json, math, random, struct, sys

out = sys.argv[1]
D, L = 4, 2


def heads_row(rng, H):
    base = [rng.gauss(0, 1) for _ in range(D)]
    rows = [base, [2 * x + 0.01 * rng.gauss(0, 1) for x in base]]
    rows += [[rng.gauss(0, 1) for _ in range(D)] for _ in range(H - 2)]
    return rows[:H]


def write(name, T=300, H=3, tweak=None, shapes=None, meta=None):
    """tweak(layer, kind, t, h, d, value) -> value; shapes(layer, kind) -> (T, H)."""
    rng = random.Random(1)
    tensors, data = {}, b""
    for layer in range(L):
        for kind in ("k", "v"):
            t_n, h_n = shapes(layer, kind) if shapes else (T, H)
            vals = []
            for t in range(t_n):
                for h, row in enumerate(heads_row(rng, h_n)):
                    for d, x in enumerate(row):
                        vals.append(tweak(layer, kind, t, h, d, x) if tweak else x)
            blob = struct.pack("<%df" % len(vals), *vals)
            tensors["layers.%d.%s" % (layer, kind)] = {"dtype": "F32", "shape": [t_n, h_n, D],
                                                       "data_offsets": [len(data), len(data) + len(blob)]}
            data += blob
    m = {"format": "headrecon.activations", "post_rope": "true"}
    m.update(meta or {})
    header = json.dumps(dict({"__metadata__": m}, **tensors)).encode()
    with open(out + "/" + name, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data)


write("good.safetensors")
write("nan.safetensors", tweak=lambda l, k, t, h, d, x: math.nan if (l, k, t, h, d) == (1, "k", 17, 1, 2) else x)
write("inf.safetensors", tweak=lambda l, k, t, h, d, x: math.inf if (l, k, t, h, d) == (0, "v", 3, 0, 0) else x)
write("huge.safetensors", tweak=lambda l, k, t, h, d, x: x * 1e30)
for n in (0, 1, 2):
    write("tokens%d.safetensors" % n, T=n)
write("heads_mismatch.safetensors", shapes=lambda l, k: (300, 3 if l == 0 else 2))
write("tokens_mismatch.safetensors", shapes=lambda l, k: (300 if k == "k" else 299, 3))
# Head 1 an exact copy of head 0 (duplicate); head 2 constant.
rng_dup = {}
def dup(l, k, t, h, d, x):
    if h == 0:
        rng_dup[(l, k, t, d)] = x
        return x
    if h == 1:
        return rng_dup[(l, k, t, d)]
    return x
write("duplicate.safetensors", tweak=dup)
write("constant.safetensors", tweak=lambda l, k, t, h, d, x: 1.5 if h == 2 else x)
