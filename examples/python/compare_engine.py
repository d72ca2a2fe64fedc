"""Cross-check on a real model: SmolLM2-135M (the demo's Q4_1 GGUF) captured
by headrecon_capture through transformers' GGUF loader (dequantized to
float32) and by the example C++ engine (headrecon-engine capture) on the same
token ids. Prints, per kind, the largest difference relative to the largest
value and the relative RMS error, then `headrecon fit`'s mean held-out R2 of
both files. The engine stores Q/K in the GGUF converter's order (rotary pairs
(2i, 2i+1)); they are put back in HF's order (halves) before comparing.

Needs, besides torch and transformers: pip install gguf accelerate
Usage: python compare_engine.py --engine build/release/examples/engine/headrecon-engine \
         --cli build/release/examples/headrecon_cli/headrecon --gguf MODEL.gguf --text FILE [--seqs 4 --seq-len 256]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from headrecon_capture import capture  # noqa: E402


def load(path):
    with safe_open(path, framework="pt") as f:
        return f.metadata(), {n: f.get_tensor(n) for n in f.keys()}


def gguf_to_hf_order(x):
    """[tokens, heads, d] with components (2i, 2i+1) paired -> HF's (i, i + d/2)."""
    t, h, d = x.shape
    return x.reshape(t, h, d // 2, 2).transpose(-1, -2).reshape(t, h, d)


def mean_r2(cli, acts, kind):
    r = subprocess.run([cli, "fit", "--acts", acts, "--kind", kind, "--sink", "4", "--refs", "2",
                        "--same-layer", "--holdout-block", "256", "--out", acts + f".{kind}.plan"], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"headrecon fit failed on {acts}:\n{r.stderr}")
    return float(re.search(rf"mean held-out R2 \({kind}\): (\S+)", r.stdout).group(1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True)
    p.add_argument("--cli", required=True)
    p.add_argument("--gguf", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--seqs", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    a = p.parse_args()
    d, name = os.path.split(os.path.abspath(a.gguf))
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
    with open(a.text, encoding="utf-8", errors="replace") as f:
        ids = tok(f.read(), add_special_tokens=False)["input_ids"]
    n = a.seqs * a.seq_len
    if len(ids) < n:
        sys.exit(f"{a.text}: {len(ids)} tokens, {n} needed")
    ids = ids[:n]
    seqs = [ids[i:i + a.seq_len] for i in range(0, n, a.seq_len)]
    with tempfile.TemporaryDirectory() as tmp:
        hf, eng = os.path.join(tmp, "hf.safetensors"), os.path.join(tmp, "engine.safetensors")
        capture(model, seqs, hf, batch_size=2)
        r = subprocess.run([a.engine, "capture", "--model", a.gguf, "--ids", " ".join(map(str, ids)),
                            "--tokens", str(n), "--seq-len", str(a.seq_len), "--out", eng],
                           capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"engine capture failed:\n{r.stderr}")
        _, th = load(hf)
        _, te = load(eng)
        if not torch.equal(th["positions"], te["positions"]):
            sys.exit("positions differ")
        print(f"SmolLM2-135M, {a.seqs} x {a.seq_len} tokens of {a.text}: transformers "
              f"{transformers.__version__} (GGUF dequantized, float32) vs headrecon-engine")
        for kind in "qkv":
            worst_rel, sse, ss = 0.0, 0.0, 0.0
            for layer in range(model.config.num_hidden_layers):
                x = th[f"layers.{layer}.{kind}"].double()
                y = te[f"layers.{layer}.{kind}"].double()
                if kind != "v":
                    y = gguf_to_hf_order(y)
                worst_rel = max(worst_rel, ((x - y).abs().max() / x.abs().max()).item())
                sse += ((x - y) ** 2).sum().item()
                ss += (x ** 2).sum().item()
            print(f"  {kind}: max |diff| / max |value| over layers {worst_rel:.2e}, "
                  f"relative RMS error {(sse / ss) ** 0.5:.2e}")
        for kind in "qkv":
            print(f"  mean held-out R2 ({kind}, same layer, 2 refs, sink 4): transformers "
                  f"{mean_r2(a.cli, hf, kind):.4f}, engine {mean_r2(a.cli, eng, kind):.4f}")


if __name__ == "__main__":
    main()
