"""Where Q/K/V come from inside a Hugging Face decoder, per supported architecture.

Supported: model types in SUPPORTED_MODEL_TYPES (Llama, Mistral, Qwen2: GQA
attention whose `self_attn` has q_proj/k_proj/v_proj, no Q/K norm, RoPE applied
by the modeling module's `apply_rotary_pos_emb(q, k, cos, sin)` to the
[batch, heads, tokens, head_dim] projections, and a cache that stores the
rotated keys and the values). Tested with transformers 5.24 and 4.50.3; needs the
attention to receive `position_embeddings` (transformers >= 4.48).

For each layer, hooks record the projections' outputs (pre-RoPE Q/K/V) and, when
the attention module returns, hand over:
  - K and V exactly as the model cached them (its own past_key_values / cache
    object, read right after the layer's update),
  - Q after RoPE, computed by the modeling module's own apply_rotary_pos_emb
    with the cos/sin the attention received,
  - pre-RoPE Q/K/V as the projections returned them.
Every layer of every batch checks that RoPE applied this way to the pre-RoPE K
reproduces the cached K bit for bit, and that the cached V equals v_proj's
output: any architecture or kernel that computes them differently is refused
rather than captured wrongly.
"""
import sys

import torch

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


class UnsupportedModel(ValueError):
    """The model's architecture is not one this capture knows how to read."""


def decoder_layers(model):
    """The decoder layers of a causal LM or of its base model."""
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise UnsupportedModel(f"{type(model).__name__}: no decoder layers at .model.layers or .layers")
    return list(layers)


def check_supported(model):
    """Raises UnsupportedModel naming what does not fit; returns (n_layers, n_q_heads, n_kv_heads, head_dim)."""
    config = model.config
    mtype = getattr(config, "model_type", None)
    if mtype not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModel(
            f"model type '{mtype}' ({type(model).__name__}) is not supported; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (Llama, Mistral, Qwen2 attention: q/k/v projections, "
            "RoPE by apply_rotary_pos_emb, no Q/K norm)")
    if getattr(config, "use_sliding_window", False):
        raise UnsupportedModel(f"{mtype}: use_sliding_window is set; the cache would not hold every token")
    layers = decoder_layers(model)
    n_q, n_kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = None
    for i, layer in enumerate(layers):
        attn = getattr(layer, "self_attn", None)
        for name in ("q_proj", "k_proj", "v_proj"):
            if not isinstance(getattr(attn, name, None), torch.nn.Module):
                raise UnsupportedModel(f"{mtype}: layer {i} has no self_attn.{name}")
        for name in ("q_norm", "k_norm"):
            if getattr(attn, name, None) is not None:
                raise UnsupportedModel(f"{mtype}: layer {i} has self_attn.{name} (Q/K norm is not supported)")
        if getattr(attn, "layer_idx", i) != i:
            raise UnsupportedModel(f"{mtype}: layer {i} has self_attn.layer_idx {attn.layer_idx}")
        if rotary_function(attn) is None:
            raise UnsupportedModel(f"{mtype}: {type(attn).__module__} has no apply_rotary_pos_emb")
        d = getattr(attn, "head_dim", None) or config.hidden_size // n_q
        if head_dim is not None and d != head_dim:
            raise UnsupportedModel(f"{mtype}: layer {i} has head_dim {d}, layer 0 has {head_dim}")
        head_dim = d
    if not layers:
        raise UnsupportedModel(f"{mtype}: the model has no decoder layers")
    return len(layers), n_q, n_kv, head_dim


def rotary_function(attn):
    """The modeling module's apply_rotary_pos_emb, the function the attention calls."""
    return getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)


def cached_kv(cache, layer):
    """(keys, values) [batch, kv_heads, tokens, head_dim] of `layer` in a transformers cache."""
    layers = getattr(cache, "layers", None)
    if layers is not None:  # transformers >= 4.56
        return layers[layer].keys, layers[layer].values
    if hasattr(cache, "key_cache"):  # transformers 4.48 .. 4.55 DynamicCache
        return cache.key_cache[layer], cache.value_cache[layer]
    return cache[layer][0], cache[layer][1]  # legacy tuple of (k, v)


def _kwarg(args, kwargs, names, position):
    for n in names:
        if kwargs.get(n) is not None:
            return kwargs[n]
    return args[position] if len(args) > position else None


class LayerCapture:
    """Hooks on every decoder layer; for each layer of each forward calls
    `sink(layer, q, k, v)` with [batch, heads, tokens, head_dim] tensors: Q, K
    after RoPE (post_rope) or before (not post_rope), V; K/V post-RoPE are the
    cached tensors themselves. Use as a context manager around the forwards."""

    def __init__(self, model, sink, post_rope=True, want_q=True):
        self.n_layers, self.n_q, self.n_kv, self.head_dim = check_supported(model)
        self.layers = decoder_layers(model)
        self.sink, self.post_rope, self.want_q = sink, post_rope, want_q
        self.handles = []
        self.proj = {}

    def __enter__(self):
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            for name in ("q_proj", "k_proj", "v_proj"):
                self.handles.append(getattr(attn, name).register_forward_hook(self._proj_hook(i, name[0])))
            self.handles.append(attn.register_forward_hook(self._attn_hook(i, attn), with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.proj.clear()
        return False

    def _proj_hook(self, layer, kind):
        def hook(module, args, output):
            self.proj[(layer, kind)] = output
        return hook

    def _attn_hook(self, layer, attn):
        rope = rotary_function(attn)

        def hook(module, args, kwargs, output):
            hidden = _kwarg(args, kwargs, ("hidden_states",), 0)
            pos = _kwarg(args, kwargs, ("position_embeddings",), 1)
            cache = None
            for n in ("cache", "past_key_values", "past_key_value"):
                if kwargs.get(n) is not None:
                    cache = kwargs[n]
            if pos is None:
                raise UnsupportedModel(f"layer {layer}: the attention received no position_embeddings "
                                       "(transformers >= 4.48 is needed)")
            if cache is None:
                raise UnsupportedModel(f"layer {layer}: the attention received no cache (run with use_cache=True)")
            try:
                q_raw, k_raw, v_raw = (self.proj.pop((layer, c)) for c in "qkv")
            except KeyError:
                raise UnsupportedModel(f"layer {layer}: q_proj/k_proj/v_proj were not all called") from None
            shape = (*hidden.shape[:-1], -1, self.head_dim)  # as the attention reshapes them
            q, k, v = (t.view(shape).transpose(1, 2) for t in (q_raw, k_raw, v_raw))
            q_rot, k_rot = rope(q, k, *pos)
            k_cached, v_cached = cached_kv(cache, layer)
            tokens = k.shape[2]
            if k_cached.shape[2] != tokens:
                raise UnsupportedModel(f"layer {layer}: the cache holds {k_cached.shape[2]} tokens after a "
                                       f"forward of {tokens} (a sliding-window or non-empty cache)")
            if not torch.equal(k_rot, k_cached):
                diff = (k_rot.float() - k_cached.float()).abs().max().item()
                raise UnsupportedModel(
                    f"layer {layer}: apply_rotary_pos_emb(k_proj output) differs from the cached keys "
                    f"(max abs difference {diff:.3g}); this model computes keys in a way the capture does "
                    "not reproduce")
            if not torch.equal(v, v_cached):
                raise UnsupportedModel(f"layer {layer}: the cached values differ from v_proj's output")
            if self.post_rope:
                self.sink(layer, q_rot if self.want_q else None, k_cached, v_cached)
            else:
                self.sink(layer, q if self.want_q else None, k, v_cached)
        return hook
