"""Runs a causal LM over token sequences and streams its Q/K/V into a
headrecon.activations file, one batch of sequences at a time."""
import time

import torch

from .activations_file import ActivationsWriter, parse_dtype
from .model_hooks import LayerCapture, check_supported

__version__ = "0.1.0"


def _batches(sequences, batch_size):
    """Consecutive runs of at most `batch_size` sequences of equal length."""
    batch = []
    for s in sequences:
        if batch and (len(batch) == batch_size or len(s) != len(batch[0])):
            yield batch
            batch = []
        batch.append(s)
    if batch:
        yield batch


def capture(model, sequences, out, kinds="qkv", dtype="f32", post_rope=True, batch_size=1,
            metadata=None, log=None):
    """Writes `out`: Q/K/V of every layer of `model` (a Llama, Mistral or Qwen2
    causal LM or base model, see model_hooks) on `sequences` (lists of token
    ids; each runs from position 0 with an empty cache), in token order.

    K and V are the model's own cached tensors (after RoPE; pre-RoPE K with
    post_rope=False is k_proj's output), Q is q_proj's output after the
    modeling module's apply_rotary_pos_emb (or before it). `kinds` is any
    subset of "qkv"; `dtype` the file's element type (f32, f16, bf16; f32
    stores a float32 model's values bit for bit). `positions` holds each
    token's position in its sequence. At most `batch_size` sequences are held
    at once. Puts the model in eval mode. Returns a dict of counts and timing."""
    given = str(kinds).replace(",", "")
    if not given or set(given) - set("qkv"):
        raise ValueError(f"kinds '{kinds}' must be a non-empty subset of q, k, v")
    kinds = "".join(k for k in "qkv" if k in given)
    dtype = parse_dtype(dtype)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    sequences = [list(map(int, s)) for s in sequences]
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("no sequences, or an empty sequence")
    n_layers, n_q, n_kv, head_dim = check_supported(model)
    n_tokens = sum(len(s) for s in sequences)
    heads = {"q": n_q * ("q" in kinds), "k": n_kv * ("k" in kinds), "v": n_kv * ("v" in kinds)}
    meta = {
        "source": f"headrecon_capture {__version__}",
        "model": str(getattr(model.config, "_name_or_path", "") or type(model).__name__),
        "model_type": model.config.model_type,
        "model_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "n_q_heads": str(n_q), "n_kv_heads": str(n_kv),
        "n_sequences": str(len(sequences)), "seq_len": str(max(len(s) for s in sequences)),
        "kinds": ",".join(kinds),
        "kv_source": "the model's cache (past_key_values)" if post_rope else "k_proj output; v: the model's cache",
        "q_source": ("q_proj output after the modeling module's apply_rotary_pos_emb" if post_rope
                     else "q_proj output"),
        "torch_version": torch.__version__,
    }
    try:
        import transformers
        meta["transformers_version"] = transformers.__version__
    except ImportError:
        pass
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})

    model.eval()
    base = getattr(model, "model", model)  # the decoder without the LM head
    device = next(model.parameters()).device
    state = {"token0": 0}
    t_start = time.perf_counter()
    with ActivationsWriter(out, n_layers, n_tokens, head_dim, heads, dtype, post_rope,
                           positions=True, metadata=meta) as writer:

        def sink(layer, q, k, v):
            for kind, x in (("q", q), ("k", k), ("v", v)):
                if heads[kind]:
                    b, h, t, d = x.shape  # [batch, heads, tokens, d] -> [batch * tokens, heads, d]
                    writer.write(layer, kind, state["token0"], x.transpose(1, 2).reshape(b * t, h, d))

        with torch.inference_mode(), LayerCapture(model, sink, post_rope, want_q=bool(heads["q"])):
            for batch in _batches(sequences, batch_size):
                ids = torch.tensor(batch, dtype=torch.long, device=device)
                base(input_ids=ids, use_cache=True)
                writer.write_positions(state["token0"], [p for s in batch for p in range(len(s))])
                state["token0"] += ids.numel()
                if log:
                    el = time.perf_counter() - t_start
                    log(f"{state['token0']} / {n_tokens} tokens, {state['token0'] / el:.0f} tokens/s")
        writer.finish()
    seconds = time.perf_counter() - t_start
    return {"tokens": n_tokens, "sequences": len(sequences), "layers": n_layers, "heads": heads,
            "head_dim": head_dim, "seconds": seconds}
