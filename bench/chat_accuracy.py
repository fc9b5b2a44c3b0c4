"""How well a chat model answers synthetic conversations it was not trained on: python bench/chat_accuracy.py [--ckpt=out_chat]

Conversations come from gptkit/demo_chat.py (what data/synthetic_chat.py writes) with a seed the model was not trained
on, --n of each split, half of them recall (a fact stated, then asked back 0 to --max_gap turns later):
  seen    fact values from the training split (the demo's lists of names and cities, its training syllables, numbers,
          colours and items); any conversation that also occurs in the checkpoint's training set (regenerated from
          its config) is left out;
  unseen  fact values from the held-out split, which no training conversation states.
Each final reply is generated greedily by a ChatSession, the same code chat.py runs, and must equal the expected reply
exactly (gptkit.chat_session.exact_reply: "Your name is Anna." does not answer "Your name is Ann.").

It prints recall accuracy by gap (turns between the fact and the question) and by fact, seen and unseen, and the other
kinds' accuracy. A conversation whose prompt does not fit the model's context is left out and counted: chat.py would
drop its oldest turns, the fact with them, and no model could answer.

The last line is `chat_accuracy: seen=S unseen=U long_gap=L`: S and U are the recall accuracy with seen and with unseen
values, and L the recall accuracy at gaps of 5 turns or more (seen and unseen values together).
"""
import json
import time
from dataclasses import dataclass, replace

import torch

from gptkit.chat_session import ChatSession, exact_reply, reply_accuracy
from gptkit.checkpoint import build_model, load_checkpoint
from gptkit.demo_chat import CONVERSATION_KINDS, FACTS, MAX_GAP, make_conversations, training_conversations
from gptkit.devices import pick_device
from gptkit.engine import SamplingOptions
from gptkit.errors import run_cli
from gptkit.machine import describe_machine, reproduce_command
from gptkit.options import option, parse_options
from gptkit.precision import DTYPES, for_generation
from gptkit.precision import HELP as DTYPE_HELP

KINDS = ("recall", "recall", "recall", "arithmetic", "next_day", "repeat")  # half recall, the rest the other kinds evenly
SPLITS = {"seen": "train", "unseen": "heldout"}  # the report's names -> the generator's splits
LONG_GAP = 5  # long_gap: recall at gaps of this many turns or more
REPLY_TOKENS = 64  # the most tokens generated per reply, as in train.py's chat accuracy


@dataclass
class BenchConfig:
    ckpt: str = option("out_chat", "the fine-tuned checkpoint (file or folder)")
    n: int = option(400, "conversations of each split (seen and unseen values), half of them recall", bounds="[1, 1000000]")
    seed: int = option(20261122, "seed of the conversations (not the training seed)", bounds="[0, 9223372036854775807]")
    max_gap: int = option(MAX_GAP, "the most turns between a fact and its question", bounds="[0, 1000]")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", DTYPE_HELP, DTYPES)


def gap_bucket(gap):
    """0-1, 2-3, 4-5, 6-7, 8+."""
    return "8+" if gap >= 8 else f"{gap - gap % 2}-{gap - gap % 2 + 1}"


def labels(conversation):
    """What a conversation counts under: its split and kind; for recall also its split and gap bucket, its split and fact, long_gap."""
    split, kind = conversation["split"], conversation["kind"]
    found = [f"{split} {kind}"]
    if kind == "recall":
        recall = conversation["recall"]
        found += [f"{split} gap {gap_bucket(recall['gap'])}", f"{split} fact {recall['fact']}"]
        if recall["gap"] >= LONG_GAP:
            found.append("long_gap")
    return found


def fits(session, conversation):
    """Whether chat.py would keep the whole prompt: it drops the oldest turns to keep room for the reply."""
    session.load(conversation["messages"][:-1])
    return session.context_used() <= session.block_size - session.reply_room()


def cell(counts, key):
    right, total = counts.get(key, (0, 0))
    return f"{100 * right / total:.1f}% ({right}/{total})" if total else "-"


def fraction(counts, key):
    right, total = counts.get(key, (0, 0))
    return f"{right / total:.2f}" if total else "n/a"


def main():
    cfg = parse_options(BenchConfig, description=__doc__, positional=None)
    ckpt = load_checkpoint(cfg.ckpt)
    device = pick_device(cfg.device)
    model, tokenizer = build_model(ckpt, device)
    precision = for_generation(model, cfg.dtype, device)
    print(describe_machine(device))
    print(f"checkpoint: {ckpt['path']} (step {ckpt.get('step', '?')}), {precision} precision, context {model.config.block_size} tokens")

    # 1. the conversations of each split, less those trained on and those longer than the context
    trained = ckpt.get("train_config", {})
    in_training = set()
    if trained.get("chat_data") == "demo":
        in_training = {json.dumps(c["messages"]) for c in training_conversations(trained["demo_conversations"], trained["seed"], tokenizer)}
    session = ChatSession(model, tokenizer, replace(SamplingOptions(), max_new_tokens=REPLY_TOKENS))
    conversations, too_long = [], {}
    for name, split in SPLITS.items():
        made = make_conversations(cfg.n, cfg.seed, KINDS, split, cfg.max_gap)
        new = [dict(c, split=name) for c in made if json.dumps(c["messages"]) not in in_training]
        fitting = [fits(session, c) for c in new]
        scored = [c for c, fit in zip(new, fitting) if fit]
        for c, fit in zip(new, fitting):
            if not fit:
                key = f"{name} gap {gap_bucket(c['recall']['gap'])}" if c["kind"] == "recall" else f"{name} {c['kind']}"
                too_long[key] = too_long.get(key, 0) + 1
        conversations += scored
        print(f"{name} values: {len(scored)} conversations scored of {len(made)} made ({len(made) - len(new)} left out as in the "
              f"training set, {len(new) - len(scored)} as longer than the context)")

    # 2. the replies, through the REPL's code
    started = time.time()
    counts, examples = reply_accuracy(model, tokenizer, conversations, max_new_tokens=REPLY_TOKENS, labels=labels)
    elapsed = time.time() - started

    # 3. the report
    print("recall by gap (user turns between the fact and the question):")
    print(f"  {'gap':<6} {'seen':<20} {'unseen':<20} longer than the context (left out)")
    buckets = [gap_bucket(g) for g in range(0, cfg.max_gap + 1, 2)] + (["8+"] if cfg.max_gap >= 8 else [])
    for bucket in dict.fromkeys(buckets):
        left_out = ", ".join(f"{name} {too_long[f'{name} gap {bucket}']}" for name in SPLITS if f"{name} gap {bucket}" in too_long)
        print(f"  {bucket:<6} {cell(counts, f'seen gap {bucket}'):<20} {cell(counts, f'unseen gap {bucket}'):<20} {left_out or '-'}")
    print("recall by fact:")
    for fact in FACTS:
        print(f"  {fact:<10} {cell(counts, f'seen fact {fact}'):<20} {cell(counts, f'unseen fact {fact}')}")
    print("every kind:")
    for kind in CONVERSATION_KINDS:
        print(f"  {kind:<10} {cell(counts, f'seen {kind}'):<20} {cell(counts, f'unseen {kind}')}")
    print(f"all: {cell(counts, 'all').strip()} in {elapsed:.0f}s")
    for question, expected, got in [e for e in examples if not exact_reply(e[2], e[1])][:5]:
        print(f"  wrong: user {question!r}  expected {expected!r}  got {got!r}")
    print(f"reproduce: {reproduce_command('bench/chat_accuracy.py', cfg, always=('ckpt', 'n', 'seed', 'dtype'))}")
    print(f"chat_accuracy: seen={fraction(counts, 'seen recall')} unseen={fraction(counts, 'unseen recall')} long_gap={fraction(counts, 'long_gap')}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_cli(main)
