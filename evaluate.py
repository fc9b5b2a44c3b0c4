"""Score a checkpoint on text: python evaluate.py --ckpt=out --data=FILE_OR_PREPARED_FOLDER [--key=value ...]

Reports the loss in nats per token, its perplexity, and bits per byte: the summed loss of the text's tokens in bits
over the UTF-8 bytes they stand for, which compares models with different tokenizers. A text file is tokenized with
the checkpoint's tokenizer; a folder prepared by data/prepare.py must have been prepared with it.
"""
import json

import torch

from gptkit.errors import run_cli
from gptkit.evaluation import EvalConfig, evaluate_checkpoint, summary
from gptkit.options import parse_options


def main():
    cfg = parse_options(EvalConfig, description=__doc__, positional=None)
    result = evaluate_checkpoint(cfg)
    if cfg.json:
        print(json.dumps(result))
    else:
        print(summary(result))
        print(f"reproduce: {result['command']}")


def cli():
    """The gptkit-evaluate command, and `python evaluate.py`."""
    torch.set_grad_enabled(False)
    run_cli(main)


if __name__ == "__main__":
    cli()
