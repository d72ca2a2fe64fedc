"""Calibration text as token sequences, selected the way the example engine
does (examples/engine/corpus.hpp): the files under a directory sorted by
relative path, split by index parity (even: calib, odd: eval), tokenized file
by file and packed into one stream with a separator token between documents,
then cut into sequences of seq_len tokens (the last may be shorter)."""
import os


def list_text_files(directory, suffix=".txt", split="all"):
    """Regular files under `directory` (recursively) ending in `suffix`, sorted
    by relative path; with split calib / eval only the even / odd indices."""
    if split not in ("all", "calib", "eval"):
        raise ValueError(f"unknown split '{split}' (expected calib, eval or all)")
    if not os.path.isdir(directory):
        raise ValueError(f"{directory}: not a directory")
    rel = []
    for root, _, files in os.walk(directory):
        for f in files:
            path = os.path.join(root, f)
            if f.endswith(suffix) and os.path.isfile(path):
                rel.append(os.path.relpath(path, directory).replace(os.sep, "/"))
    rel.sort(key=lambda s: s.encode("utf-8", "surrogateescape"))
    keep = [r for i, r in enumerate(rel) if split == "all" or (split == "calib") == (i % 2 == 0)]
    return [os.path.join(directory, r) for r in keep]


def document_separator(tokenizer):
    """The token between packed documents: EOS, else BOS, else none (-1)."""
    for tok in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        if tok is not None:
            return int(tok)
    return -1


def build_token_stream(tokenizer, files, max_tokens=0):
    """(token ids, files used): `files` tokenized in order (no special tokens)
    until `max_tokens` (0: all), `document_separator` between documents, the
    last document truncated. Raises ValueError when the text is too short."""
    sep = document_separator(tokenizer)
    ids, used = [], []
    for f in files:
        if max_tokens and len(ids) >= max_tokens:
            break
        with open(f, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        if not text:
            continue
        if ids and sep >= 0:
            ids.append(sep)
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        used.append(f)
    if max_tokens:
        if len(ids) < max_tokens:
            raise ValueError(f"the text holds only {len(ids)} tokens, {max_tokens} were asked for")
        del ids[max_tokens:]
    return ids, used


def cut_sequences(ids, seq_len, bos=None):
    """Consecutive sequences of `seq_len` tokens (the last may be shorter).
    With a `bos` id every sequence starts with it, followed by seq_len - 1 text tokens."""
    if seq_len < 1 or (bos is not None and seq_len < 2):
        raise ValueError(f"seq_len {seq_len} is too short")
    step = seq_len - (bos is not None)
    head = [bos] if bos is not None else []
    return [head + ids[i:i + step] for i in range(0, len(ids), step)]


def default_bos(tokenizer):
    """The BOS id when the tokenizer puts one in front of its encodings, else None."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return int(bos) if ids and ids[0] == bos else None
