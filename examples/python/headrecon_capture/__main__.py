"""Command line: python -m headrecon_capture --model DIR_OR_ID (--text FILE ... | --text-dir DIR) --out FILE."""
import argparse
import os
import sys

from .activations_file import parse_dtype

USAGE_EPILOG = """
Writes a headrecon.activations file for `headrecon fit`: every layer's Q/K/V
(post-RoPE K/V exactly as the model caches them), `positions` of every token.
Example:
  python -m headrecon_capture --model Qwen/Qwen2.5-0.5B --text-dir corpus/ --suffix .txt \\
      --tokens 65536 --seq-len 512 --batch-size 4 --dtype bf16 --out acts.safetensors
  headrecon fit --acts acts.safetensors --kind k --kind v --sink 4 --out plan.safetensors
"""

MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m headrecon_capture", epilog=USAGE_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Capture Q/K/V of a Hugging Face causal LM into a headrecon "
                                            "activations file.")
    p.add_argument("--model", required=True, help="model directory or hub id (AutoModelForCausalLM)")
    p.add_argument("--tokenizer", help="tokenizer directory or hub id (default: --model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", metavar="FILE", help="a text file (repeatable, used in order)")
    src.add_argument("--text-dir", metavar="DIR", help="text files under DIR, sorted by relative path")
    p.add_argument("--suffix", default=".txt", help="--text-dir: file name suffix (default .txt)")
    p.add_argument("--split", default="calib", choices=("calib", "eval", "all"),
                   help="--text-dir: even (calib, default), odd (eval) or all sorted files")
    p.add_argument("--tokens", type=int, default=0, help="tokens to capture, all sequences together (0: all text)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512; the last may be shorter)")
    p.add_argument("--bos", default="auto", choices=("auto", "yes", "no"),
                   help="start every sequence with BOS (auto: when the tokenizer adds one)")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per forward pass (default 1)")
    p.add_argument("--kinds", default="q,k,v", help="which of q,k,v to store (default q,k,v)")
    p.add_argument("--dtype", default="f32", help="file element type: f32 (default), f16, bf16")
    p.add_argument("--pre-rope", action="store_true", help="store Q/K before RoPE (post_rope = false)")
    p.add_argument("--model-dtype", default="float32", choices=MODEL_DTYPES,
                   help="dtype the model runs in (default float32; auto: the checkpoint's)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--ids-out", metavar="FILE", help="also write the token ids, one sequence per line")
    p.add_argument("--out", required=True, help="the activations file to write")
    a = p.parse_args(argv)
    try:
        a.dtype = parse_dtype(a.dtype)
    except ValueError as e:
        p.error(str(e))
    if a.tokens < 0:
        p.error("--tokens must be >= 0")
    if a.seq_len < 2:
        p.error("--seq-len must be >= 2")
    if a.batch_size < 1:
        p.error("--batch-size must be >= 1")
    return a


def load_model(name, model_dtype, device):
    import torch
    import transformers
    from packaging.version import Version
    # transformers 4.56 renamed torch_dtype to dtype; older ones ignore an unknown `dtype`
    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    value = "auto" if model_dtype == "auto" else getattr(torch, model_dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(name, **{key: value})
    return model.to(device)


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    import torch
    import transformers

    from .capture import capture
    from . import text
    from .model_hooks import UnsupportedModel, check_supported

    try:
        if a.text:
            files, source = a.text, "files: " + " ".join(a.text)
            for f in files:
                if not os.path.isfile(f):
                    raise ValueError(f"{f}: not a file")
        else:
            files = text.list_text_files(a.text_dir, a.suffix, a.split)
            if not files:
                raise ValueError(f"{a.text_dir}: no files ending in '{a.suffix}' (split {a.split})")
            source = f"dir: {a.text_dir} suffix {a.suffix} split {a.split} ({len(files)} files, sorted by path)"
        tok = transformers.AutoTokenizer.from_pretrained(a.tokenizer or a.model)
        bos = text.default_bos(tok) if a.bos == "auto" else (tok.bos_token_id if a.bos == "yes" else None)
        if a.bos == "yes" and bos is None:
            raise ValueError("--bos yes: the tokenizer has no BOS token")
        # With BOS each sequence holds seq_len - 1 text tokens; --tokens counts stored tokens.
        budget = 0
        if a.tokens:
            step = a.seq_len - (bos is not None)
            full, rest = divmod(a.tokens, a.seq_len)
            budget = full * step + max(0, rest - (bos is not None))
            if budget == 0:
                raise ValueError(f"--tokens {a.tokens} leaves no room for text after BOS")
        ids, used = text.build_token_stream(tok, files, budget)
        if not ids:
            raise ValueError("the text holds no tokens")
        seqs = text.cut_sequences(ids, a.seq_len, bos)
        device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(a.model, a.model_dtype, device)
        check_supported(model)
        meta = {"text_source": source, "text_files_used": str(len(used)),
                "bos": "none" if bos is None else str(bos), "tokenizer": a.tokenizer or a.model}
        if used:
            meta.update(text_first_file=used[0], text_last_file=used[-1])
        if a.ids_out:
            with open(a.ids_out, "w") as f:
                for s in seqs:
                    f.write(" ".join(map(str, s)) + "\n")
        st = capture(model, seqs, a.out, kinds=a.kinds, dtype=a.dtype, post_rope=not a.pre_rope,
                     batch_size=a.batch_size, metadata=meta,
                     log=lambda m: print(m, file=sys.stderr, flush=True))
    except (UnsupportedModel, ValueError, OSError) as e:
        print(f"headrecon_capture: error: {e}", file=sys.stderr)
        return 1
    h = st["heads"]
    print(f"text: {source} ({len(used)} files used)")
    print(f"wrote {a.out}: {st['tokens']} tokens in {st['sequences']} sequences of <= {a.seq_len}, "
          f"{st['layers']} layers, heads q {h['q']} k {h['k']} v {h['v']}, head_dim {st['head_dim']}, "
          f"{'pre' if a.pre_rope else 'post'}-RoPE, {a.dtype}, {st['seconds']:.1f} s "
          f"({st['tokens'] / max(st['seconds'], 1e-9):.0f} tokens/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
