"""Write the alignment demo's data: python data/alignment_demo.py [--out_dir=align_demo] [--key=value ...]

Into --out_dir: sft.jsonl (fine-tuning conversations, their replies mixed: plain answers and chatty ones),
prompts.jsonl (training prompts with the answer the judge expects) and heldout.jsonl (prompts whose questions never
occur in the other two). The task and the judge are in gptkit/alignment_demo.py; docs/alignment.md runs the demo.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from gptkit.alignment_demo import make_conversations, make_prompts
from gptkit.errors import run_cli
from gptkit.files import atomic_write, check_output
from gptkit.options import option, parse_options


@dataclass
class AlignmentDemoConfig:
    out_dir: str = option("align_demo", "the folder to write sft.jsonl, prompts.jsonl and heldout.jsonl into")
    conversations: int = option(20000, "fine-tuning conversations", bounds="[1, 100000000]")
    prompts: int = option(2000, "training prompts (for the pairs, PPO and GRPO)", bounds="[1, 100000000]")
    heldout: int = option(300, "held-out prompts (for measuring)", bounds="[1, 100000000]")
    seed: int = option(0, "random seed: the same seed writes the same files", bounds="[0, 4294967295]")


def write_jsonl(path, records):
    with atomic_write(path, "wb") as f:
        for record in records:
            f.write((json.dumps(record) + "\n").encode("utf-8"))


def main():
    cfg = parse_options(AlignmentDemoConfig, description=__doc__, positional=None)
    check_output(cfg.out_dir, "out_dir", folder=True)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "sft.jsonl", make_conversations(cfg.conversations, cfg.seed))
    write_jsonl(out / "prompts.jsonl", make_prompts(cfg.prompts, cfg.seed + 2))
    write_jsonl(out / "heldout.jsonl", make_prompts(cfg.heldout, cfg.seed + 3, split="heldout"))
    print(f"wrote {out}/sft.jsonl ({cfg.conversations:,} conversations), prompts.jsonl ({cfg.prompts:,}) and heldout.jsonl ({cfg.heldout:,})")


def cli():
    """The gptkit-alignment-demo command, and `python data/alignment_demo.py`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
