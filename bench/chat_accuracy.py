"""How often a chat model answers held-out synthetic conversations right: python bench/chat_accuracy.py [--ckpt=out_chat]

Conversations come from data/synthetic_chat.py with a seed the model was not trained on; any that also occur in its
training set (regenerated from the checkpoint's own config) are left out. Each final reply is generated greedily by a
ChatSession, the same code chat.py runs, and must match the expected reply exactly.
"""
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from the repo root

import torch

from chat_session import reply_accuracy
from checkpoint import build_model, load_checkpoint
from common import pick_device, run_cli
from data.synthetic_chat import KINDS, make_conversations
from options import option, parse_options
from precision import DTYPES, HELP as DTYPE_HELP, for_generation


@dataclass
class BenchConfig:
    ckpt: str = option("out_chat", "the fine-tuned checkpoint (file or folder)")
    n: int = option(400, "held-out conversations to generate (before removing any seen in training)")
    seed: int = option(20261122, "seed of the held-out conversations (not the training seed)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", DTYPE_HELP, DTYPES)


def main():
    cfg = parse_options(BenchConfig, description=__doc__, positional=None)
    ckpt = load_checkpoint(cfg.ckpt)
    device = pick_device(cfg.device)
    model, tokenizer = build_model(ckpt, device)
    precision = for_generation(model, cfg.dtype, device)
    trained = ckpt.get("train_config", {})
    seen = set()
    if trained.get("chat_data") == "demo":
        seen = {json.dumps(c["messages"]) for c in make_conversations(trained["demo_conversations"], trained["seed"])}
    conversations = [c for c in make_conversations(cfg.n, cfg.seed) if json.dumps(c["messages"]) not in seen]
    started = time.time()
    counts, examples = reply_accuracy(model, tokenizer, conversations)
    right, total = counts["all"]
    print(f"checkpoint: {ckpt['path']} (step {ckpt.get('step', '?')}), {precision} precision")
    print(f"held-out conversations: {total} ({cfg.n - len(conversations)} of {cfg.n} dropped as seen in training)")
    for kind in KINDS:
        if kind in counts:
            r, t = counts[kind]
            print(f"  {kind:<11} {100 * r / t:5.1f}%  ({r}/{t})")
    print(f"accuracy: {100 * right / total:.1f}% ({right}/{total}) in {time.time() - started:.0f}s")
    for question, expected, got in examples[:3]:
        print(f"  user: {question!r}  expected: {expected!r}  got: {got!r}")
    print(f"reproduce: python bench/chat_accuracy.py --ckpt={cfg.ckpt} --n={cfg.n} --seed={cfg.seed} --dtype={cfg.dtype}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_cli(main)
