#!/usr/bin/env python3
"""Writes tests/model/tiny_qwen2.gguf: a random 2-layer model of architecture
qwen2 (Q/K/V biases, NEOX RoPE, untied output.weight, GQA 4:2, head_dim 8)
with weights in Q8_0, Q4_1, Q5_0, F16 and F32, plus "expect.logits", the
logits of fixture.token_ids from reference_forward.py's NumPy forward pass
(float64, HF conventions). Covers the engine paths SmolLM2 does not: biases,
NEOX rotation, a separate output matrix, other tensor types.
Deterministic (seeded). Requires: pip install gguf numpy
"""
import os
import sys
import tempfile

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_forward  # noqa: E402

N_LAYER, N_EMBD, N_HEAD, N_KV, N_FF, VOCAB = 2, 32, 4, 2, 64, 64
HD = N_EMBD // N_HEAD
IDS = [3, 17, 42, 5, 63, 0, 9, 9, 28, 51, 12]


def tensors(rng):
    """(name, float32 array [out, in] or [n], ggml type) of the model."""
    def mat(o, i, scale):
        return rng.normal(0, scale, size=(o, i)).astype(np.float32)
    out = [("token_embd.weight", mat(VOCAB, N_EMBD, 1.0), T.F32),
           ("output_norm.weight", rng.uniform(0.5, 1.5, N_EMBD).astype(np.float32), T.F32),
           ("output.weight", mat(VOCAB, N_EMBD, 0.3), T.F16)]
    for l in range(N_LAYER):
        p = f"blk.{l}."
        out += [
            (p + "attn_norm.weight", rng.uniform(0.5, 1.5, N_EMBD).astype(np.float32), T.F32),
            (p + "attn_q.weight", mat(N_HEAD * HD, N_EMBD, 0.3), T.Q8_0),
            (p + "attn_k.weight", mat(N_KV * HD, N_EMBD, 0.3), T.Q4_1),
            (p + "attn_v.weight", mat(N_KV * HD, N_EMBD, 0.3), T.Q5_0),
            (p + "attn_q.bias", rng.normal(0, 0.5, N_HEAD * HD).astype(np.float32), T.F32),
            (p + "attn_k.bias", rng.normal(0, 0.5, N_KV * HD).astype(np.float32), T.F32),
            (p + "attn_v.bias", rng.normal(0, 0.5, N_KV * HD).astype(np.float32), T.F32),
            (p + "attn_output.weight", mat(N_EMBD, N_HEAD * HD, 0.2), T.Q8_0),
            (p + "ffn_norm.weight", rng.uniform(0.5, 1.5, N_EMBD).astype(np.float32), T.F32),
            (p + "ffn_gate.weight", mat(N_FF, N_EMBD, 0.3), T.Q8_0),
            (p + "ffn_up.weight", mat(N_FF, N_EMBD, 0.3), T.Q4_1),
            (p + "ffn_down.weight", mat(N_EMBD, N_FF, 0.2), T.Q8_0),
        ]
    return out


def write(path, ts, extra=None):
    w = gguf.GGUFWriter(path, arch="qwen2")
    w.add_block_count(N_LAYER)
    w.add_context_length(128)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_rope_freq_base(1000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_array("fixture.token_ids", IDS)
    for name, x, qt in ts:
        if qt == T.F32:
            w.add_tensor(name, x)
        elif qt == T.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, quantize(x, qt), raw_dtype=qt)
    if extra is not None:
        w.add_tensor("expect.logits", extra.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(out):
    ts = tensors(np.random.default_rng(7))
    with tempfile.TemporaryDirectory() as d:
        tmp = os.path.join(d, "m.gguf")
        write(tmp, ts)
        logits = reference_forward.Model(tmp).forward(IDS)
    write(out, ts, logits)
    print(f"wrote {out} ({os.path.getsize(out)} bytes); logits range "
          f"[{logits.min():.3f}, {logits.max():.3f}]")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "tiny_qwen2.gguf"))
