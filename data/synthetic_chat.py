"""Write synthetic chat conversations whose final answers can be checked exactly: python data/synthetic_chat.py [--key=value ...]

One {"kind": KIND, "messages": [...]} per line (recall conversations also carry {"recall": {"fact", "value", "gap", "facts"}});
the kinds, the two splits of fact values and how conversations are made are in gptkit/demo_chat.py.
"""
import json
from collections import Counter
from dataclasses import dataclass

from gptkit.demo_chat import CONVERSATION_KINDS, MAX_GAP, SPLITS, make_conversations
from gptkit.errors import run_cli
from gptkit.files import atomic_write, check_output
from gptkit.options import option, parse_options


@dataclass
class SyntheticChatConfig:
    out: str = option("chat.jsonl", "the JSONL file to write, one conversation per line")
    n: int = option(1000, "how many conversations to write", bounds="[1, 100000000]")
    seed: int = option(0, "random seed: the same seed writes the same conversations", bounds="[0, 9223372036854775807]")
    kinds: list[str] = option(list(CONVERSATION_KINDS), f"conversation kinds, cycled evenly; any of {', '.join(CONVERSATION_KINDS)} "
                                                         "(one listed twice gets twice the share)")
    split: str = option("train", "which set the facts' values come from: train (what the chat demo fine-tunes on) or heldout "
                                 "(values no train conversation states, for measuring)", SPLITS)
    max_gap: int = option(MAX_GAP, "the most turns between a stated fact and the question asking it back", bounds="[0, 1000]")


def main():
    cfg = parse_options(SyntheticChatConfig, description=__doc__, positional=None)
    check_output(cfg.out, "out")
    conversations = make_conversations(cfg.n, cfg.seed, cfg.kinds, cfg.split, cfg.max_gap)
    with atomic_write(cfg.out, "wb") as f:
        for conversation in conversations:
            f.write((json.dumps(conversation) + "\n").encode("utf-8"))
    counts = Counter(c["kind"] for c in conversations)
    per_kind = ", ".join(f"{kind} {counts[kind]:,}" for kind in dict.fromkeys(cfg.kinds))
    print(f"wrote {len(conversations):,} {cfg.split} conversations to {cfg.out}: {per_kind}")


def cli():
    """The gptkit-synthetic-chat command, and `python data/synthetic_chat.py`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
