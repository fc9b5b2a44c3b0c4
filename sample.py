"""Print completions from a trained checkpoint: python sample.py --ckpt=out --prompt="def " [--key=value ...]"""
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from checkpoint import build_model, load_checkpoint
from common import UsageError, pick_device, run_cli
from generate import TextStream, generate
from options import option, parse_options


@dataclass
class SampleConfig:
    ckpt: str = option("out", "a checkpoint file, or the folder train.py wrote (best.pt, else last.pt)")
    prompt: str = option("", "text to continue (empty: start a new document)")
    prompt_file: str = option("", "read the prompt from this UTF-8 file instead")
    num_samples: int = option(1, "how many completions to print")
    max_new_tokens: int = option(200, "tokens to generate per completion")
    temperature: float = option(0.8, "0 picks the most likely token; higher is more random")
    top_k: Optional[int] = option(50, "sample only among the k most likely tokens (none: all)")
    seed: Optional[int] = option(1337, "random seed (none: different every run)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")


def read_prompt(cfg):
    if not cfg.prompt_file:
        return cfg.prompt
    path = Path(cfg.prompt_file)
    if not path.is_file():
        raise UsageError(f"--prompt_file={path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"--prompt_file={path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def main():
    cfg = parse_options(SampleConfig, description=__doc__, positional=None)
    if cfg.temperature < 0 or cfg.max_new_tokens < 0 or cfg.num_samples < 1:
        raise UsageError("--temperature and --max_new_tokens must not be negative, and --num_samples must be at least 1")
    device = pick_device(cfg.device)
    model, tokenizer = build_model(load_checkpoint(cfg.ckpt), device)
    prompt = read_prompt(cfg)
    prompt_ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    for i in range(cfg.num_samples):
        if cfg.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        stream = TextStream(tokenizer)
        sys.stdout.write(prompt)
        seed = None if cfg.seed is None else cfg.seed + i
        for token in generate(model, prompt_ids, cfg.max_new_tokens, cfg.temperature, cfg.top_k, seed,
                              stop_ids={tokenizer.eot_id}, vocab_limit=tokenizer.n_vocab):
            sys.stdout.write(stream.feed(token))
            sys.stdout.flush()
        print(stream.flush())


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_cli(main)
