#!/usr/bin/env python3
"""Writes blocks_fixture.bin: rows of 32 float32 values and their q8_0 and
q4_0 blocks as the `gguf` package's NumPy port of ggml's reference quantizers
(quantize_row_q8_0_ref / quantize_row_q4_0_ref, documented there as bit-exact)
produces them. test_block_quant.cpp checks headrecon's quantizers against it
byte for byte, so CI needs no Python.

    python3 -m venv /tmp/v && /tmp/v/bin/pip install gguf numpy
    /tmp/v/bin/python tests/quant/make_block_fixture.py tests/quant/blocks_fixture.bin

Format: uint32 n_rows, then per row 32 float32 (little endian), 34 bytes of
q8_0, 18 bytes of q4_0.
"""
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType, quants

rng = np.random.default_rng(20261130)
rows = []
rows += [rng.standard_normal(32) for _ in range(40)]                       # ordinary
rows += [rng.standard_normal(32) * 10.0 ** rng.integers(-6, 6) for _ in range(20)]  # scales
for _ in range(10):                                                        # outliers
    r = rng.standard_normal(32)
    r[rng.integers(0, 32)] = rng.choice([-1, 1]) * 40.0
    rows.append(r)
rows.append(np.zeros(32))                                                  # d = 0
ties = np.arange(32) - 15.5                                                # x/d exactly k + 0.5
ties[0] = 127.0
rows.append(ties)
rows.append(-ties)
same = np.full(32, 0.25)                                                   # |max| ties: first one wins
same[3], same[9] = -3.0, 3.0
rows.append(same)
rows.append(-same)
rows.append(np.array([1e30] + list(rng.standard_normal(31))))              # f16 scale overflows
rows.append(np.array([8.0 * 65504.0 * 1.5] + [-1.0] * 31))
rows.append(np.linspace(-8.0, 8.0, 32))                                    # q4_0's clip at 15
x = np.asarray(rows, dtype=np.float32)

q8 = quants.quantize(x, GGMLQuantizationType.Q8_0)
q4 = quants.quantize(x, GGMLQuantizationType.Q4_0)
assert q8.shape == (len(rows), 34) and q4.shape == (len(rows), 18)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<I", len(rows)))
    for i in range(len(rows)):
        f.write(x[i].astype("<f4").tobytes())
        f.write(q8[i].tobytes())
        f.write(q4[i].tobytes())
print(f"{len(rows)} rows -> {sys.argv[1]}")
