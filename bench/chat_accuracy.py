"""How often a chat model answers held-out synthetic conversations right: python bench/chat_accuracy.py [--ckpt=out_chat]

Conversations come from data/synthetic_chat.py with a seed the model was not trained on; any that also occur in its
training set (regenerated from the checkpoint's own config) are left out. Each final reply is generated greedily by a
ChatSession, the same code chat.py runs, and must match the expected reply exactly.
"""
import json
import time
from dataclasses import dataclass

import torch

from gptkit.chat_session import reply_accuracy
from gptkit.checkpoint import build_model, load_checkpoint
from gptkit.demo_chat import CONVERSATION_KINDS, make_conversations
from gptkit.devices import pick_device
from gptkit.errors import run_cli
from gptkit.options import option, parse_options
from gptkit.precision import DTYPES, for_generation
from gptkit.precision import HELP as DTYPE_HELP


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
    for kind in CONVERSATION_KINDS:
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
