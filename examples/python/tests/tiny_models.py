"""Tiny randomly initialized causal LMs and a locally trained tokenizer, saved
as Hugging Face model directories (nothing is downloaded)."""
import os
import random

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

WORDS = ("the key value head layer token cache query attention model linear map reference "
         "predict rotate sink batch stream file plan fit ridge budget memory decode kernel").split()


def write_corpus(directory, n_files=6, words_per_file=900, seed=0):
    """Pseudo-English text files under `directory` (two of them in a subfolder)."""
    rng = random.Random(seed)
    paths = []
    for i in range(n_files):
        sub = os.path.join(directory, "sub") if i >= n_files - 2 else directory
        os.makedirs(sub, exist_ok=True)
        words = [rng.choice(WORDS) + ("." if rng.random() < 0.1 else "") for _ in range(words_per_file)]
        path = os.path.join(sub, f"doc{i:02d}.txt")
        with open(path, "w") as f:
            f.write(" ".join(words) + "\n")
        paths.append(path)
    return paths


def make_tokenizer(texts, add_bos):
    """A byte-level BPE (vocab ~300) with <s> (BOS) and </s> (EOS); prepends BOS when add_bos."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


CONFIGS = {
    # GQA 8:2, head_dim 8; Llama without biases, Qwen2 with Q/K/V biases, Mistral like Llama.
    "llama": lambda v: transformers.LlamaConfig(
        vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0, initializer_range=0.2,
        bos_token_id=0, eos_token_id=1, tie_word_embeddings=False),
    "qwen2": lambda v: transformers.Qwen2Config(
        vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=512, rope_theta=1000000.0, initializer_range=0.2,
        use_sliding_window=False, bos_token_id=0, eos_token_id=1, tie_word_embeddings=True),
    "mistral": lambda v: transformers.MistralConfig(
        vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, sliding_window=None,
        initializer_range=0.2, bos_token_id=0, eos_token_id=1),
}


def make_model(kind, vocab_size, seed=0):
    """A randomly initialized causal LM of `kind` (a key of CONFIGS), float32, eval mode."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[kind](vocab_size))
    return model.float().eval()


def save_model_dir(directory, kind, texts, seed=0):
    """Writes a model directory (config, weights, tokenizer) that from_pretrained loads."""
    tok = make_tokenizer(texts, add_bos=(kind != "qwen2"))
    model = make_model(kind, len(tok), seed)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
