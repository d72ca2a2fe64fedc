"""Tests of headrecon_capture on tiny randomly initialized Llama, Qwen2 and
Mistral models built here: the file's K/V equal the model's own cache bit for
bit (f32), Q equals the model's own post-RoPE query (recorded by wrapping its
apply_rotary_pos_emb) and pre-RoPE Q/K/V equal q/k/v_proj hooks; f16/bf16 are
the round-to-nearest conversions of those; the file is read by the safetensors
library and by `headrecon fit` (env HEADRECON_CLI, skipped when unset).

Run: python -m unittest discover -s examples/python/tests (with PYTHONPATH=examples/python)."""
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import unittest

import torch
import transformers
from packaging.version import Version
from safetensors import safe_open

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.dirname(HERE)
sys.path.insert(0, PKG)
sys.path.insert(0, HERE)

import tiny_models  # noqa: E402
from headrecon_capture import UnsupportedModel, capture  # noqa: E402
from headrecon_capture.activations_file import ActivationsWriter  # noqa: E402
from headrecon_capture.model_hooks import LayerCapture, rotary_function  # noqa: E402
from headrecon_capture.text import build_token_stream, cut_sequences, list_text_files  # noqa: E402

CLI = os.environ.get("HEADRECON_CLI")
# transformers 4.56 renamed from_pretrained's torch_dtype to dtype
DTYPE_KW = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


def read_text(path):
    with open(path) as f:
        return f.read()
ARCHS = ("llama", "qwen2", "mistral")


def read_acts(path):
    """(metadata, {name: tensor}, {name: safetensors dtype}) through the safetensors library."""
    with safe_open(path, framework="pt") as f:
        names = list(f.keys())
        return (f.metadata(), {n: f.get_tensor(n) for n in names},
                {n: f.get_slice(n).get_dtype() for n in names})


def batches(seqs, batch_size):
    out = []
    for s in seqs:
        if out and len(out[-1]) < batch_size and len(out[-1][0]) == len(s):
            out[-1].append(s)
        else:
            out.append([s])
    return out


@contextlib.contextmanager
def recording_rotary(model):
    """Wraps the modeling module's apply_rotary_pos_emb; yields the list of its (q_embed, k_embed)."""
    attn = model.model.layers[0].self_attn
    module = sys.modules[type(attn).__module__]
    original, calls = module.apply_rotary_pos_emb, []

    def wrapper(*args, **kwargs):
        q, k = original(*args, **kwargs)
        calls.append((q.clone(), k.clone()))
        return q, k
    module.apply_rotary_pos_emb = wrapper
    try:
        yield calls
    finally:
        module.apply_rotary_pos_emb = original


def reference(model, seqs, batch_size):
    """{(layer, kind): [tokens, heads, d]} of an independent run in the same
    batches: post-RoPE q/k from the model's own RoPE call, k/v from its returned
    cache, and pre-RoPE 'q0', 'k0', 'v0' from forward hooks on the projections."""
    n_layers = model.config.num_hidden_layers
    out = {}
    hooks, proj = [], {}
    for i, layer in enumerate(model.model.layers):
        for name in ("q_proj", "k_proj", "v_proj"):
            def hook(m, a, o, key=(i, name[0] + "0")):
                proj[key] = o
            hooks.append(getattr(layer.self_attn, name).register_forward_hook(hook))
    try:
        for batch in batches(seqs, batch_size):
            ids = torch.tensor(batch)
            b, t = ids.shape
            with torch.no_grad(), recording_rotary(model) as calls:
                res = model.model(input_ids=ids, use_cache=True)
            cache = getattr(res, "cache", None) or res.past_key_values
            assert len(calls) == n_layers
            for layer in range(n_layers):
                lay = cache.layers[layer] if hasattr(cache, "layers") else None
                k = lay.keys if lay is not None else cache.key_cache[layer]
                v = lay.values if lay is not None else cache.value_cache[layer]
                rows = {"q": calls[layer][0], "k": k, "v": v, "k_rope_call": calls[layer][1]}
                d = k.shape[-1]
                for kind in ("q0", "k0", "v0"):
                    rows[kind] = proj[(layer, kind)].view(b, t, -1, d).transpose(1, 2)
                for kind, x in rows.items():
                    x = x.transpose(1, 2).reshape(b * t, x.shape[1], d)
                    out.setdefault((layer, kind), []).append(x)
    finally:
        for h in hooks:
            h.remove()
    return {key: torch.cat(v) for key, v in out.items()}


class CaptureTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = cls.tmp.name
        cls.corpus = os.path.join(cls.dir, "corpus")
        paths = tiny_models.write_corpus(cls.corpus)
        texts = [read_text(p) for p in paths]
        cls.model_dirs = {a: tiny_models.save_model_dir(os.path.join(cls.dir, a), a, texts) for a in ARCHS}

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def load(self, arch, dtype=torch.float32):
        model = transformers.AutoModelForCausalLM.from_pretrained(self.model_dirs[arch], **{DTYPE_KW: dtype})
        tok = transformers.AutoTokenizer.from_pretrained(self.model_dirs[arch])
        return model.eval(), tok

    def sequences(self, tok, n_tokens=700, seq_len=64):
        ids, _ = build_token_stream(tok, list_text_files(self.corpus, ".txt", "all"), n_tokens)
        return cut_sequences(ids, seq_len, None)

    def run_cli(self, *args):
        env = dict(os.environ, PYTHONPATH=PKG + os.pathsep + os.environ.get("PYTHONPATH", ""))
        return subprocess.run([sys.executable, "-m", "headrecon_capture", *args], env=env,
                              capture_output=True, text=True)

    def fit(self, acts, *kinds):
        if not CLI:
            return None
        args = [CLI, "fit", "--acts", acts, "--sink", "1", "--refs", "1", "--out", acts + ".plan"]
        for k in kinds:
            args += ["--kind", k]
        r = subprocess.run(args, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for k in kinds:
            # One captured sequence: the default split (whole sequences) holds none out.
            self.assertRegex(r.stdout, rf"mean (held-out|in-sample) R2 \({k}\): -?[0-9.]+")
        return r.stdout

    def check_against_reference(self, acts, ref, seqs, n_layers, kinds="qkv", pre_rope=False,
                                dtype=torch.float32):
        meta, t, st_dtypes = read_acts(acts)
        n_tokens = sum(len(s) for s in seqs)
        self.assertEqual(meta["format"], "headrecon.activations")
        self.assertEqual(meta["version"], "1")
        self.assertEqual(meta["n_layers"], str(n_layers))
        self.assertEqual(meta["n_tokens"], str(n_tokens))
        self.assertEqual(meta["post_rope"], "false" if pre_rope else "true")
        expect_names = {f"layers.{l}.{k}" for l in range(n_layers) for k in kinds} | {"positions"}
        self.assertEqual(set(t), expect_names)
        positions = torch.cat([torch.arange(len(s), dtype=torch.int32) for s in seqs])
        self.assertTrue(torch.equal(t["positions"], positions))
        st_name = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[dtype]
        for layer in range(n_layers):
            for kind in kinds:
                name = f"layers.{layer}.{kind}"
                want = ref[(layer, kind + "0" if pre_rope and kind != "v" else kind)].to(dtype)
                self.assertEqual(st_dtypes[name], st_name, name)
                self.assertEqual(meta["head_dim"], str(want.shape[-1]))
                self.assertEqual(tuple(t[name].shape), tuple(want.shape), name)
                # Bitwise: compare the bits, so that -0.0 / NaN payloads count too.
                bits = torch.int32 if dtype == torch.float32 else torch.int16
                self.assertTrue(torch.equal(t[name].view(bits), want.view(bits)),
                                f"{acts}: {name} differs from the reference, max abs "
                                f"{(t[name].float() - want.float()).abs().max().item():.3g}")
        return meta, t

    def test_cli_post_rope_f32_equals_model_cache_and_fits(self):
        """Each architecture through the command line: K/V bitwise equal to the
        model's own cache, Q to its own post-RoPE query; GQA head counts; BOS;
        `headrecon fit` reads the file."""
        for arch in ARCHS:
            with self.subTest(arch=arch):
                acts, ids_out = self.path(f"{arch}.safetensors"), self.path(f"{arch}.ids")
                r = self.run_cli("--model", self.model_dirs[arch], "--text-dir", self.corpus, "--split", "all",
                                 "--tokens", "700", "--seq-len", "64", "--batch-size", "3",
                                 "--ids-out", ids_out, "--out", acts)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertRegex(r.stdout, r"wrote .*: 700 tokens in 11 sequences of <= 64")
                with open(ids_out) as f:
                    seqs = [list(map(int, line.split())) for line in f]
                self.assertEqual([len(s) for s in seqs], [64] * 10 + [60])
                model, tok = self.load(arch)
                bos = 0 if arch != "qwen2" else None  # the Llama/Mistral tokenizers prepend <s>
                self.assertEqual([s[0] == 0 for s in seqs], [bos == 0] * len(seqs))
                ref = reference(model, seqs, 3)
                meta, t = self.check_against_reference(acts, ref, seqs, model.config.num_hidden_layers)
                self.assertEqual(t["layers.0.q"].shape[1], model.config.num_attention_heads)
                self.assertEqual(t["layers.0.k"].shape[1], model.config.num_key_value_heads)
                self.assertLess(t["layers.0.k"].shape[1], t["layers.0.q"].shape[1])  # GQA
                self.assertEqual(meta["model_type"], arch)
                # The model's own RoPE call saw the same keys it cached.
                for layer in range(model.config.num_hidden_layers):
                    self.assertTrue(torch.equal(ref[(layer, "k_rope_call")], ref[(layer, "k")]))
                self.fit(acts, "k", "v")
                self.fit(acts, "q")

    def test_pre_rope_equals_projection_hooks(self):
        for arch in ("llama", "qwen2"):
            with self.subTest(arch=arch):
                model, tok = self.load(arch)
                seqs = self.sequences(tok, 300, 50)
                acts = self.path(f"{arch}-pre.safetensors")
                capture(model, seqs, acts, post_rope=False, batch_size=2)
                ref = reference(model, seqs, 2)
                self.check_against_reference(acts, ref, seqs, model.config.num_hidden_layers, pre_rope=True)
                self.fit(acts, "k")

    def test_f16_bf16_are_rounded_reference(self):
        model, tok = self.load("qwen2")
        seqs = self.sequences(tok, 260, 64)
        ref = reference(model, seqs, 4)
        for name, dt in (("f16", torch.float16), ("bf16", torch.bfloat16)):
            with self.subTest(dtype=name):
                acts = self.path(f"qwen2-{name}.safetensors")
                capture(model, seqs, acts, dtype=name, batch_size=4)
                self.check_against_reference(acts, ref, seqs, model.config.num_hidden_layers, dtype=dt)
                self.fit(acts, "k", "v")

    def test_bf16_model_stores_its_cache_unchanged(self):
        model, tok = self.load("llama", torch.bfloat16)
        seqs = self.sequences(tok, 200, 40)
        acts = self.path("llama-bf16-model.safetensors")
        capture(model, seqs, acts, dtype="bf16", kinds="kv", batch_size=5)
        ref = reference(model, seqs, 5)
        self.assertEqual(ref[(0, "k")].dtype, torch.bfloat16)
        self.check_against_reference(acts, ref, seqs, model.config.num_hidden_layers, kinds="kv",
                                     dtype=torch.bfloat16)

    def test_batching_changes_no_row(self):
        """One sequence per forward and four per forward give the same rows (to
        float rounding: batched matrix products may sum in another order)."""
        model, tok = self.load("llama")
        seqs = self.sequences(tok, 300, 48)
        one, four = self.path("b1.safetensors"), self.path("b4.safetensors")
        capture(model, seqs, one, batch_size=1)
        capture(model, seqs, four, batch_size=4)
        _, a, _ = read_acts(one)
        _, b, _ = read_acts(four)
        self.assertEqual(set(a), set(b))
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-5, msg=name)

    def test_rows_reach_the_file_batch_by_batch(self):
        """After each batch its rows are in PATH.tmp already and later rows are
        not: nothing waits in memory for the end of the capture."""
        model, tok = self.load("qwen2")
        seqs = self.sequences(tok, 256, 32)
        acts, snapshots = self.path("stream.safetensors"), []

        def after_batch(_msg):
            with open(acts + ".tmp", "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                entry = json.loads(f.read(n))["layers.2.v"]
                f.seek(8 + n + entry["data_offsets"][0])
                data = f.read(entry["data_offsets"][1] - entry["data_offsets"][0])
            snapshots.append(torch.frombuffer(bytearray(data), dtype=torch.float32).view(entry["shape"]))
        capture(model, seqs, acts, batch_size=2, log=after_batch)
        _, t, _ = read_acts(acts)
        final = t["layers.2.v"]
        self.assertEqual(len(snapshots), 4)
        for i, snap in enumerate(snapshots):
            done = 64 * (i + 1)
            self.assertTrue(torch.equal(snap[:done], final[:done]), f"batch {i}")
            self.assertEqual(int(snap[done:].count_nonzero()), 0, f"batch {i}")

    def test_kinds_subset(self):
        model, tok = self.load("qwen2")
        seqs = self.sequences(tok, 128, 64)
        acts = self.path("kv.safetensors")
        capture(model, seqs, acts, kinds="k,v")
        _, t, _ = read_acts(acts)
        self.assertFalse(any(n.endswith(".q") for n in t))
        self.fit(acts, "k", "v")
        with self.assertRaisesRegex(ValueError, "subset of q, k, v"):
            capture(model, seqs, self.path("x.safetensors"), kinds="kx")

    def test_unsupported_architectures_are_refused(self):
        gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
        with self.assertRaisesRegex(UnsupportedModel, r"model type 'gpt2'.*supported: llama, mistral, qwen2"):
            capture(gpt2, [[1, 2, 3]], self.path("gpt2.safetensors"))
        if hasattr(transformers, "Qwen3ForCausalLM"):  # transformers >= 4.51
            qwen3 = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
                vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8))
            with self.assertRaisesRegex(UnsupportedModel, "model type 'qwen3'"):
                capture(qwen3, [[1, 2, 3]], self.path("qwen3.safetensors"))
            self.assertFalse(os.path.exists(self.path("qwen3.safetensors")))
        # A supported type whose attention has a K norm is refused too.
        model, _ = self.load("llama")
        model.model.layers[1].self_attn.k_norm = torch.nn.Identity()
        with self.assertRaisesRegex(UnsupportedModel, r"layer 1 has self_attn\.k_norm"):
            capture(model, [[1, 2, 3]], self.path("knorm.safetensors"))
        model, _ = self.load("qwen2")
        model.config.use_sliding_window = True
        with self.assertRaisesRegex(UnsupportedModel, "use_sliding_window"):
            capture(model, [[1, 2, 3]], self.path("sw.safetensors"))

    def test_keys_computed_differently_are_refused(self):
        """When the attention's RoPE is not the function the capture applies to
        q_proj's output, the cached keys differ and the capture stops."""
        model, tok = self.load("llama")
        attn = model.model.layers[0].self_attn
        module = sys.modules[type(attn).__module__]
        original = rotary_function(attn)
        with LayerCapture(model, lambda *a: None):
            module.apply_rotary_pos_emb = lambda q, k, cos, sin, **kw: (
                original(q, k, cos, sin, **kw)[0], original(q, k, cos, sin, **kw)[1] * 1.0001)
            try:
                with self.assertRaisesRegex(UnsupportedModel, "differs from the cached keys"), torch.no_grad():
                    model.model(input_ids=torch.tensor([[5, 6, 7, 8]]), use_cache=True)
            finally:
                module.apply_rotary_pos_emb = original

    def test_writer_refuses_gaps_overlaps_and_reserved_keys(self):
        path = self.path("w.safetensors")
        with ActivationsWriter(path, 1, 4, 2, {"k": 1}, "f32", True) as w:
            w.write(0, "k", 0, torch.zeros(2, 1, 2))
            with self.assertRaisesRegex(ValueError, r"layers\.0\.k.*token order.*next expected token 2"):
                w.write(0, "k", 1, torch.zeros(2, 1, 2))
            with self.assertRaisesRegex(ValueError, r"rows of shape \[2, 2, 2\]"):
                w.write(0, "k", 2, torch.zeros(2, 2, 2))
            with self.assertRaisesRegex(ValueError, r"'layers\.0\.v' is not declared"):
                w.write(0, "v", 0, torch.zeros(2, 1, 2))
            w.write_positions(0, [0, 1, 2, 3])
            with self.assertRaisesRegex(ValueError, r"layers\.0\.k': tokens \[2, 4\) were never written"):
                w.finish()
        self.assertFalse(os.path.exists(path) or os.path.exists(path + ".tmp"))
        with self.assertRaisesRegex(ValueError, "'n_tokens' is reserved"):
            ActivationsWriter(path, 1, 4, 2, {"k": 1}, "f32", True, metadata={"n_tokens": "9"})
        with self.assertRaisesRegex(ValueError, "unknown dtype 'f8'"):
            ActivationsWriter(path, 1, 4, 2, {"k": 1}, "f8", True)
        with ActivationsWriter(path, 1, 4, 2, {"k": 1}, "f16", True) as w:
            w.write(0, "k", 0, torch.ones(2, 1, 2))
            big = torch.ones(2, 1, 2)
            big[1, 0, 1] = 1e6  # beyond f16's 65504
            with self.assertRaisesRegex(ValueError, r"layers\.0\.k': token 3 has a value that is not finite "
                                                    r"in f16 \(source value 1000000\.0\)"):
                w.write(0, "k", 2, big)

    def test_text_selection(self):
        files = list_text_files(self.corpus, ".txt", "all")
        self.assertEqual([os.path.relpath(f, self.corpus) for f in files],
                         ["doc00.txt", "doc01.txt", "doc02.txt", "doc03.txt", "sub/doc04.txt", "sub/doc05.txt"])
        self.assertEqual(list_text_files(self.corpus, ".txt", "calib"), files[0::2])
        self.assertEqual(list_text_files(self.corpus, ".txt", "eval"), files[1::2])
        _, tok = self.load("qwen2")
        ids, used = build_token_stream(tok, files[:2], 0)
        first = tok(read_text(files[0]), add_special_tokens=False)["input_ids"]
        self.assertEqual(ids[:len(first) + 1], first + [tok.eos_token_id])  # EOS between documents
        self.assertEqual(used, files[:2])
        self.assertEqual(cut_sequences([5, 6, 7, 8, 9], 3, bos=0), [[0, 5, 6], [0, 7, 8], [0, 9]])
        with self.assertRaisesRegex(ValueError, "holds only"):
            build_token_stream(tok, files[:1], 10 ** 7)

    def test_cli_errors_name_the_problem(self):
        r = self.run_cli("--model", self.model_dirs["llama"], "--text-dir", self.path("nope"), "--out",
                         self.path("e.safetensors"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("nope: not a directory", r.stderr)
        r = self.run_cli("--model", self.model_dirs["llama"], "--text-dir", self.corpus, "--dtype", "f64",
                         "--out", self.path("e.safetensors"))
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown dtype 'f64'", r.stderr)


if __name__ == "__main__":
    unittest.main()
