"""Streaming writer of `headrecon.activations` safetensors files.

The safetensors header lists every tensor's shape and byte range, so the file
is declared up front (layers, tokens, heads, head_dim, dtype); rows are then
written at their offsets batch by batch, in token order per tensor, and never
held in memory all at once. The layout is the one `headrecon::ActivationReader`
reads: metadata format, version, n_layers, n_tokens, head_dim, post_rope (plus
free-form string keys), tensors `layers.{L}.{q|k|v}` [tokens, heads, head_dim]
in F32, F16 or BF16 and optionally `positions` I32 [tokens].
"""
import json
import os

import torch

FORMAT = "headrecon.activations"
VERSION = "1"
KINDS = ("q", "k", "v")
RESERVED_KEYS = ("format", "version", "n_layers", "n_tokens", "head_dim", "post_rope")

# file dtype name -> (safetensors dtype, torch dtype, bytes per element)
DTYPES = {
    "f32": ("F32", torch.float32, 4),
    "f16": ("F16", torch.float16, 2),
    "bf16": ("BF16", torch.bfloat16, 2),
}


def parse_dtype(name):
    """'f32' | 'f16' | 'bf16' (case-insensitive) -> the canonical name; ValueError otherwise."""
    key = str(name).lower()
    if key not in DTYPES:
        raise ValueError(f"unknown dtype '{name}' (expected f32, f16 or bf16)")
    return key


class ActivationsWriter:
    """Declares a file of `n_layers` x `heads[kind]` heads x `head_dim` for
    `n_tokens` tokens, then takes rows in token order per tensor. The file is
    written to PATH.tmp and renamed to PATH by finish(); close() without
    finish() removes it."""

    def __init__(self, path, n_layers, n_tokens, head_dim, heads, dtype, post_rope,
                 positions=True, metadata=None):
        self.path = str(path)
        self._fd = None
        if n_layers <= 0:
            raise ValueError(f"{self.path}: n_layers must be positive, got {n_layers}")
        if head_dim <= 0:
            raise ValueError(f"{self.path}: head_dim must be positive, got {head_dim}")
        if n_tokens < 0:
            raise ValueError(f"{self.path}: n_tokens must be non-negative, got {n_tokens}")
        unknown = set(heads) - set(KINDS)
        if unknown:
            raise ValueError(f"{self.path}: unknown kinds {sorted(unknown)} (expected q, k, v)")
        self.heads = {k: int(heads.get(k, 0)) for k in KINDS}
        if not any(self.heads.values()):
            raise ValueError(f"{self.path}: no kind has a positive head count (nothing to store)")
        self.dtype = parse_dtype(dtype)
        st_dtype, self.torch_dtype, esize = DTYPES[self.dtype]
        self.n_layers, self.n_tokens, self.head_dim = int(n_layers), int(n_tokens), int(head_dim)

        meta = {}
        for key, value in (metadata or {}).items():
            if key in RESERVED_KEYS:
                raise ValueError(f"{self.path}: metadata key '{key}' is reserved by the format")
            meta[str(key)] = str(value)
        meta.update(format=FORMAT, version=VERSION, n_layers=str(self.n_layers),
                    n_tokens=str(self.n_tokens), head_dim=str(self.head_dim),
                    post_rope="true" if post_rope else "false")

        # name -> [offset in data, bytes per token row, tokens written]
        self._tensors = {}
        header = {"__metadata__": meta}
        offset = 0

        def declare(name, dt, shape, row_bytes):
            nonlocal offset
            size = self.n_tokens * row_bytes
            header[name] = {"dtype": dt, "shape": shape, "data_offsets": [offset, offset + size]}
            self._tensors[name] = [offset, row_bytes, 0]
            offset += size

        for layer in range(self.n_layers):
            for kind in KINDS:
                h = self.heads[kind]
                if h > 0:
                    declare(f"layers.{layer}.{kind}", st_dtype, [self.n_tokens, h, self.head_dim],
                            h * self.head_dim * esize)
        if positions:
            declare("positions", "I32", [self.n_tokens], 4)

        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)  # the data buffer starts 8-byte aligned
        self._data_start = 8 + len(text)
        self._tmp = self.path + ".tmp"
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(self._fd, len(text).to_bytes(8, "little") + text)
            os.ftruncate(self._fd, self._data_start + offset)
        except BaseException:
            self.close()
            raise

    def _write_rows(self, name, token0, data, n):
        entry = self._tensors.get(name)
        if entry is None:
            raise ValueError(f"{self.path}: tensor '{name}' is not declared in this file")
        offset, row_bytes, written = entry
        if token0 != written:
            raise ValueError(f"{self.path}: tensor '{name}': rows must be written in token order; "
                             f"got tokens [{token0}, {token0 + n}), next expected token {written}")
        if token0 + n > self.n_tokens:
            raise ValueError(f"{self.path}: tensor '{name}': tokens [{token0}, {token0 + n}) are "
                             f"outside [0, {self.n_tokens})")
        if len(data) != n * row_bytes:
            raise AssertionError(f"{name}: {len(data)} bytes for {n} rows of {row_bytes}")
        pos, view = self._data_start + offset + token0 * row_bytes, memoryview(data)
        while view:
            done = os.pwrite(self._fd, view, pos)
            view, pos = view[done:], pos + done
        entry[2] = token0 + n

    def write(self, layer, kind, token0, rows):
        """Writes tokens [token0, token0 + len(rows)) of layers.{layer}.{kind}
        from a tensor [tokens, heads, head_dim] of any float dtype and device,
        converted to the file's dtype (round to nearest even)."""
        name = f"layers.{layer}.{kind}"
        if kind not in KINDS or not 0 <= layer < self.n_layers or self.heads[kind] == 0:
            raise ValueError(f"{self.path}: tensor '{name}' is not declared in this file")
        shape = (self.heads[kind], self.head_dim)
        if rows.dim() != 3 or tuple(rows.shape[1:]) != shape:
            raise ValueError(f"{self.path}: tensor '{name}': rows of shape {list(rows.shape)}, "
                             f"expected [tokens, {shape[0]}, {shape[1]}]")
        if not rows.is_floating_point():
            raise ValueError(f"{self.path}: tensor '{name}': rows of dtype {rows.dtype} are not floating point")
        x = rows.detach().to(device="cpu", dtype=self.torch_dtype).contiguous()
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            t = int((~finite).reshape(x.shape[0], -1).any(dim=1).nonzero()[0])
            bad = rows[t].detach().float().cpu().reshape(-1)[~finite[t].reshape(-1)][0].item()
            raise ValueError(f"{self.path}: tensor '{name}': token {token0 + t} has a value that is not finite "
                             f"in {self.dtype} (source value {bad}); a wider dtype (bf16, f32) may hold it")
        # bf16 has no NumPy type: its bits go out as int16 (same size, little-endian).
        raw = x.view(torch.int16) if self.torch_dtype == torch.bfloat16 else x
        self._write_rows(name, token0, raw.numpy().tobytes(), int(x.shape[0]))

    def write_positions(self, token0, positions):
        """Writes the positions of tokens [token0, token0 + len(positions)); each >= 0."""
        p = torch.as_tensor(positions).reshape(-1)
        if p.numel() and int(p.min()) < 0:
            raise ValueError(f"{self.path}: tensor 'positions': negative position {int(p.min())}")
        if p.numel() and int(p.max()) > 2**31 - 1:
            raise ValueError(f"{self.path}: tensor 'positions': position {int(p.max())} exceeds int32")
        self._write_rows("positions", token0, p.to(torch.int32).numpy().tobytes(), int(p.numel()))

    def finish(self):
        """Checks that every tensor was written in full, then completes the file."""
        for name, (_, _, written) in self._tensors.items():
            if written != self.n_tokens:
                raise ValueError(f"{self.path}: tensor '{name}': tokens [{written}, {self.n_tokens}) "
                                 f"were never written ({written} of {self.n_tokens} tokens)")
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        os.replace(self._tmp, self.path)

    def close(self):
        """Abandons an unfinished file (removes PATH.tmp); no-op after finish()."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            try:
                os.remove(self._tmp)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
