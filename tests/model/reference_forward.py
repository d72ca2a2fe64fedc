#!/usr/bin/env python3
"""Independent NumPy reference for the example engine (examples/engine/).

Reads the GGUF with the `gguf` package (GGUFReader + gguf.quants.dequantize),
runs a Llama forward pass in float64 written from the model's equations in the
Hugging Face convention (the GGUF Q/K rows are un-permuted back to HF order
and RoPE uses rotate_half), and builds the tokenizer with the `tokenizers`
package (Rust BPE, the SmolLM2 pre-tokenizer: Digits(individual) + ByteLevel).

Sub-commands:
  logits    --ids "I I ..." [--json-out F] [--compare F.f32] : top-5 logits per
            position; --json-out writes the reference file the C++ test reads;
            --compare checks a raw f32 [n x vocab] dump of the engine's logits.
  ppl       --ids-file F [--seq-len 512]                        : perplexity
  tokens    --json-out F                                        : reference token ids
            of fixed strings (tests/model/reference_tokens.json)
  tokcheck  --engine BIN --files F... : engine vs `tokenizers` on whole files

Requires: pip install gguf numpy tokenizers
"""
import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import gguf
from gguf import GGUFReader
from gguf.quants import dequantize

DEFAULT_MODEL = os.path.join(
    os.environ.get("HEADRECON_CACHE") or os.path.expanduser("~/.cache/headrecon"),
    "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


# ---------------------------------------------------------------- GGUF ----

def field_value(r, key):
    f = r.fields[key]
    t = f.types[0]
    if t == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    if t == gguf.GGUFValueType.ARRAY:
        if f.types[1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i][0].item() for i in f.data]
    return f.parts[f.data[0]][0].item()


class Model:
    def __init__(self, path):
        r = GGUFReader(path)
        self.r = r
        arch = field_value(r, "general.architecture")
        assert arch in ("llama", "qwen2"), f"reference supports llama and qwen2, got {arch}"
        self.arch = arch
        a = arch + "."
        self.n_layer = field_value(r, a + "block_count")
        self.n_embd = field_value(r, a + "embedding_length")
        self.n_head = field_value(r, a + "attention.head_count")
        self.n_kv = field_value(r, a + "attention.head_count_kv")
        self.hd = self.n_embd // self.n_head
        self.base = float(field_value(r, a + "rope.freq_base"))
        self.eps = float(field_value(r, a + "attention.layer_norm_rms_epsilon"))
        self.w = {}
        for t in r.tensors:
            x = dequantize(t.data, t.tensor_type).astype(np.float64)
            self.w[t.name] = x.reshape(tuple(int(v) for v in reversed(t.shape.tolist())))
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]  # tied embedding
        # GGUF llama Q/K rows are permuted for llama.cpp's adjacent-pair RoPE;
        # restore HF order (per head: first half, second half) for rotate_half.
        # qwen2 GGUFs keep HF order (llama.cpp rotates halves for them).
        for l in range(self.n_layer if arch == "llama" else 0):
            for name, nh in (("attn_q", self.n_head), ("attn_k", self.n_kv)):
                k = f"blk.{l}.{name}.weight"
                w = self.w[k]
                self.w[k] = (w.reshape(nh, self.hd // 2, 2, w.shape[1]).swapaxes(1, 2)
                             .reshape(w.shape))
        self.vocab = self.w["token_embd.weight"].shape[0]

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):
        # x: [T, heads, d]; HF rotate_half convention.
        d = self.hd
        inv = 1.0 / (self.base ** (np.arange(0, d, 2, dtype=np.float64) / d))
        ang = pos[:, None].astype(np.float64) * inv[None, :]
        cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=-1)[:, None, :]
        sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=-1)[:, None, :]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        rot = np.concatenate([-x2, x1], axis=-1)
        return x * cos + rot * sin

    def forward(self, ids):
        """Logits [T, vocab] of one sequence starting at position 0."""
        T = len(ids)
        W = self.w
        x = W["token_embd.weight"][np.asarray(ids)]
        pos = np.arange(T)
        mask = np.triu(np.full((T, T), -np.inf), k=1)
        rep = self.n_head // self.n_kv
        for l in range(self.n_layer):
            p = f"blk.{l}."
            h = self.rms(x, W[p + "attn_norm.weight"])
            q, k, v = (h @ W[p + f"attn_{n}.weight"].T + W.get(p + f"attn_{n}.bias", 0.0)
                       for n in "qkv")
            q = q.reshape(T, self.n_head, self.hd)
            k = k.reshape(T, self.n_kv, self.hd)
            v = v.reshape(T, self.n_kv, self.hd)
            q, k = self.rope(q, pos), self.rope(k, pos)
            out = np.empty((T, self.n_head, self.hd))
            for hh in range(self.n_head):
                kv = hh // rep
                s = q[:, hh, :] @ k[:, kv, :].T / math.sqrt(self.hd) + mask
                s = np.exp(s - s.max(axis=-1, keepdims=True))
                s /= s.sum(axis=-1, keepdims=True)
                out[:, hh, :] = s @ v[:, kv, :]
            x = x + out.reshape(T, -1) @ W[p + "attn_output.weight"].T
            h = self.rms(x, W[p + "ffn_norm.weight"])
            g = h @ W[p + "ffn_gate.weight"].T
            u = h @ W[p + "ffn_up.weight"].T
            x = x + (g / (1.0 + np.exp(-g)) * u) @ W[p + "ffn_down.weight"].T
        x = self.rms(x, W["output_norm.weight"])
        return x @ W["output.weight"].T


def log_softmax(z):
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------- tokenizer ----

def hf_tokenizer(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    r = GGUFReader(path)
    tokens = field_value(r, "tokenizer.ggml.tokens")
    merges = field_value(r, "tokenizer.ggml.merges")
    pre = field_value(r, "tokenizer.ggml.pre")
    assert pre == "smollm", pre
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
    tok = Tokenizer(bpe)
    # SmolLM2's tokenizer.json: Digits(individual_digits) then ByteLevel (GPT-2 regex).
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    return tok


TOKEN_CASES = [
    "Hello world",
    "Hello world! It's 2024, and I'm   testing tokenizers...",
    "don't won't they'll we've I'd you're She's HE'S",
    "numbers: 3.14159, 1,000,000 and 42nd; ½ ² ٣ Ⅻ",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nmany\r\nCRLF",
    "int main(void) {\n    return printk(KERN_INFO \"x=%d\\n\", x);\n}\n",
    "Unicode: café naïve Zürich 東京 Привет мир 😀🚀 — “quotes” …",
    "<|im_start|>user\nhi<|im_end|>",
    "=================\nSection title\n=================\n\n.. note::\n\n   Indented *rst* ``code``.",
    "   \n  \t ",
    "a",
    "",
]

KJV_EXCERPT = (
    "In the beginning God created the heaven and the earth. And the earth was without form, "
    "and void; and darkness was upon the face of the deep. And the Spirit of God moved upon "
    "the face of the waters. And God said, Let there be light: and there was light. And God "
    "saw the light, that it was good: and God divided the light from the darkness. And God "
    "called the light Day, and the darkness he called Night. And the evening and the morning "
    "were the first day.\n\n1:6 And God said, Let there be a firmament in the midst of the "
    "waters, and let it divide the waters from the waters.\n")


def cmd_tokens(args):
    tok = hf_tokenizer(args.model)
    cases = TOKEN_CASES + [KJV_EXCERPT]
    out = {"model_sha256": sha256(args.model),
           "generator": "tests/model/reference_forward.py tokens (tokenizers "
                        + __import__("tokenizers").__version__ + ")",
           "note": "special tokens are not parsed (encode(text, parse_special=false))",
           "cases": []}
    for s in cases:
        ids = tok.encode(s, add_special_tokens=False).ids if s else []
        # tokenizers treats <|...|> as plain text here (no added tokens registered).
        out["cases"].append({"text": s, "ids": ids})
        print(len(ids), repr(s[:50]))
    with open(args.json_out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


def cmd_tokcheck(args):
    tok = hf_tokenizer(args.model)
    n_files = n_tokens = n_bad = 0
    for path in args.files:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        ref = tok.encode(text, add_special_tokens=False).ids
        got = subprocess.run([args.engine, "tokenize", "--model", args.model, "--text", path],
                             check=True, capture_output=True, text=True).stdout.split()
        got = [int(x) for x in got]
        n_files += 1
        n_tokens += len(ref)
        if got != ref:
            n_bad += 1
            i = next((i for i, (a, b) in enumerate(zip(got, ref)) if a != b), min(len(got), len(ref)))
            print(f"MISMATCH {path}: first difference at token {i}: engine {got[i:i+5]} "
                  f"tokenizers {ref[i:i+5]}")
    print(f"tokenizer check: {n_files} files, {n_tokens} tokens, {n_bad} files differ")
    return 1 if n_bad else 0


# -------------------------------------------------------------- logits ----

def parse_ids(s):
    return [int(x) for x in s.replace(",", " ").split()]


def cmd_logits(args):
    ids = parse_ids(args.ids)
    m = Model(args.model)
    t0 = time.time()
    z = m.forward(ids)
    print(f"numpy float64 forward of {len(ids)} tokens: {time.time() - t0:.1f} s")
    top = []
    for t in range(len(ids)):
        order = np.argsort(-z[t])[: args.top]
        top.append({"ids": [int(i) for i in order], "logits": [float(z[t, i]) for i in order]})
        print(t, ids[t], " ".join(f"{int(i)}:{z[t, i]:.4f}" for i in order))
    if args.compare:
        c = np.fromfile(args.compare, dtype=np.float32).reshape(len(ids), -1).astype(np.float64)
        d = np.abs(c - z)
        agree = int((c.argmax(-1) == z.argmax(-1)).sum())
        lp_ref, lp_c = log_softmax(z), log_softmax(c)
        print(f"C++ vs NumPy: max |logit diff| {d.max():.3e} (mean {d.mean():.3e}, "
              f"max |logit| {np.abs(z).max():.2f}); argmax agreement {agree}/{len(ids)}; "
              f"max |log-prob diff| {np.abs(lp_ref - lp_c).max():.3e}")
    ppl = None
    if args.ppl_ids:
        pid = parse_ids(args.ppl_ids)
        lp = log_softmax(m.forward(pid))
        nll = -sum(lp[i, pid[i + 1]] for i in range(len(pid) - 1)) / (len(pid) - 1)
        ppl = {"tokens": pid, "mean_nll": float(nll), "perplexity": math.exp(nll)}
        print(f"perplexity of the {len(pid)} --ppl-ids tokens (one sequence): {math.exp(nll):.6f}")
    if args.json_out:
        out = {
            "model_file": os.path.basename(args.model),
            "model_sha256": sha256(args.model),
            "generator": "tests/model/reference_forward.py logits (numpy " + np.__version__
                         + ", gguf " + getattr(gguf, "__version__", "0.19.0") + ", float64)",
            "tokens": ids,
            "top": top,
        }
        if ppl:
            out["ppl"] = ppl
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")


def cmd_ppl(args):
    with open(args.ids_file) as f:
        ids = parse_ids(f.read())
    m = Model(args.model)
    nll, n, t0 = 0.0, 0, time.time()
    for s in range(0, len(ids), args.seq_len):
        seq = ids[s: s + args.seq_len]
        if len(seq) < 2:
            continue
        lp = log_softmax(m.forward(seq))
        nll -= sum(lp[i, seq[i + 1]] for i in range(len(seq) - 1))
        n += len(seq) - 1
    print(f"numpy float64: {len(ids)} tokens, {n} predicted, perplexity {math.exp(nll / n):.6f} "
          f"(mean NLL {nll / n:.6f}), {time.time() - t0:.1f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("logits")
    p.add_argument("--ids", required=True)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json-out")
    p.add_argument("--compare")
    p.add_argument("--ppl-ids", help="also store the perplexity of these ids (one sequence)")
    p = sub.add_parser("ppl")
    p.add_argument("--ids-file", required=True)
    p.add_argument("--seq-len", type=int, default=512)
    p = sub.add_parser("tokens")
    p.add_argument("--json-out", required=True)
    p = sub.add_parser("tokcheck")
    p.add_argument("--engine", required=True)
    p.add_argument("--files", nargs="+", required=True)
    args = ap.parse_args()
    return {"logits": cmd_logits, "ppl": cmd_ppl, "tokens": cmd_tokens, "tokcheck": cmd_tokcheck}[args.cmd](args) or 0


if __name__ == "__main__":
    sys.exit(main())
