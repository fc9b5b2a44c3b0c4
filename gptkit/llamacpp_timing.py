"""llama.cpp beside our Engine in bench/generate.py: the same weights exported to GGUF (gptkit/gguf_export.py), the
same prompts as token ids, timed the way a Python user runs it (llama-cpp-python's Llama.generate, greedy)."""
import time
from pathlib import Path

import torch

from gptkit.gguf_export import write_gguf
from gptkit.tokenizer import SPECIAL_TOKENS, Tokenizer, _with_specials

INSTALL_HINT = 'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python (builds llama.cpp from source, about 12 minutes on 2 cores)'


def stand_in_tokenizer(n_vocab):
    """A byte-level BPE tokenizer with exactly n_vocab ids (the special tokens included), whose merges are pairs of
    bytes: the GGUF needs a vocabulary of the model's size, and the prompts are token ids, so what it spells is moot."""
    ranks = {bytes([b]): b for b in range(256)}
    pairs = (bytes([a, b]) for a in range(256) for b in range(256))
    n_ranks = n_vocab - len(SPECIAL_TOKENS)
    if not 256 <= n_ranks <= 256 + 256 * 256:
        raise ValueError(f"no stand-in tokenizer of {n_vocab} ids")
    while len(ranks) < n_ranks:
        ranks[next(pairs)] = len(ranks)
    return Tokenizer("bpe", ranks, _with_specials(ranks))


def load(llama_cpp, model, gguf_type, folder, context):
    """llama.cpp's Llama on a GGUF of `model`'s weights in `gguf_type` (written into `folder`)."""
    path = write_gguf(model, stand_in_tokenizer(model.config.vocab_size), Path(folder) / f"bench-{gguf_type}.gguf", gguf_type)
    threads = torch.get_num_threads()  # as many as ours
    return llama_cpp.Llama(model_path=str(path), n_ctx=context, n_batch=min(512, context), n_threads=threads, n_threads_batch=threads,
                           verbose=False)


def time_llamacpp(llm, prompt, new_tokens):
    """(greedy tokens, time to first token, decode tokens/s) of Llama.generate from a fresh cache."""
    llm.reset()
    tokens, stamps = [], []
    started = time.perf_counter()
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        stamps.append(time.perf_counter())
        tokens.append(token)
        if len(tokens) == new_tokens:
            break
    decode_s = stamps[-1] - stamps[0]
    return tokens, stamps[0] - started, (len(tokens) - 1) / decode_s if decode_s > 0 else 0.0
