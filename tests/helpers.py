"""Plain helpers the test modules import: sample texts, a synthetic corpus, tiny models, running the scripts."""
import os
import random
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"

# Text in several scripts, used by the tokenizer and streaming tests.
SAMPLES = {
    "english": "The quick brown fox jumps over the lazy dog. It's 3:14 -- isn't it?\n\tIndented line.",
    "chinese": "你好，世界",
    "emoji": "🙂👍🏽",
    "mixed": "def f(x):\n    return x  # 返回 🙂👍🏽 ok\r\nnaïve café — ∑ 1e3 <|endoftext|> end",
}


def make_corpus(n_sentences=600, seed=0):
    """Deterministic English-like text with enough structure for a tiny model to learn quickly."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my friend", "the king", "our teacher", "the old man", "a bird"]
    verbs = ["sees", "likes", "eats", "finds", "calls", "follows", "writes to"]
    objects = ["the fish", "a red ball", "the queen", "some bread", "the river", "a small house", "the moon"]
    lines = []
    for _ in range(n_sentences):
        lines.append(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}.")
    return "\n".join(lines) + "\n"


def tiny_config(preset="gpt2", pos_encoding=None, vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16, **extra):
    from gptkit.model import GPTConfig

    config = GPTConfig.from_preset(preset, vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd, **extra)
    if pos_encoding is not None:
        config = GPTConfig(**{**vars(config), "pos_encoding": pos_encoding})
    return config


def tiny_model(preset="gpt2", pos_encoding=None, seed=0, scale=None, **sizes):
    """A tiny GPT in eval mode. The modern preset zero-initialises the residual projections, which would make
    attention contribute nothing; `scale` (or, for modern, a default) re-draws every weight so tokens interact."""
    from gptkit.model import GPT

    torch.manual_seed(seed)
    model = GPT(tiny_config(preset, pos_encoding, **sizes))
    if scale is None and model.config.zero_init_proj:
        scale = 0.2
    if scale:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, scale)
    return model.eval()


def run_script(*args, cwd=REPO, timeout=120, input=None):
    """Run one of the repo's scripts as a user would: `python SCRIPT ARGS` from the repo root (`input`: its stdin)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, encoding="utf-8", timeout=timeout,
                          input=input)
