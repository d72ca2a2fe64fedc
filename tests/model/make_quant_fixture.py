#!/usr/bin/env python3
"""Writes tests/model/quant_fixture.gguf: for each ggml type below, a tensor
"q.TYPE" of random blocks (2 rows x 256 elements; scale fields set to finite
random halfs) and "expect.TYPE", its F32 dequantization by gguf.quants (the
`gguf` package, independent of the engine's C++). The C++ test dequantizes
q.TYPE and compares. Deterministic (seeded). Requires: pip install gguf numpy
"""
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

# type -> byte offsets of f16 scale fields within one block
SCALES = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
ROWS, COLS = 2, 256


def main(out):
    rng = np.random.default_rng(20240611)
    w = gguf.GGUFWriter(out, arch="fixture")
    w.add_string("fixture.description", "random ggml blocks and their gguf.quants dequantization")
    for qt in [T.F16, T.BF16] + list(SCALES):
        if qt == T.F16:
            raw = rng.normal(0, 2, size=(ROWS, COLS)).astype(np.float16)
            w.add_tensor(f"q.{qt.name}", raw)
            expect = raw.astype(np.float32)
        else:
            block, nbytes = gguf.GGML_QUANT_SIZES[qt]
            nb = ROWS * COLS // block
            raw = rng.integers(0, 256, size=(nb, nbytes), dtype=np.uint8)
            if qt == T.BF16:
                f = rng.normal(0, 2, size=ROWS * COLS).astype(np.float32)
                raw = (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(nb, nbytes)
            for off in SCALES.get(qt, []):
                h = rng.uniform(-0.5, 0.5, size=nb).astype(np.float16)
                raw[:, off:off + 2] = h.view(np.uint8).reshape(nb, 2)
            raw = raw.reshape(ROWS, -1)
            w.add_tensor(f"q.{qt.name}", raw, raw_dtype=qt)
            expect = dequantize(raw, qt).astype(np.float32).reshape(ROWS, COLS)
        assert np.all(np.isfinite(expect)), qt.name
        w.add_tensor(f"expect.{qt.name}", expect)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "quant_fixture.gguf"))
