"""Print completions from a trained checkpoint: python sample.py --ckpt=out --prompt="def " [--key=value ...]

Sampling (temperature, top_k, top_p, min_p, repetition_penalty, stop strings) or, with --beam_size, beam search.
"""
import sys
from dataclasses import dataclass

import torch

from gptkit.checkpoint import build_model
from gptkit.devices import pick_device
from gptkit.engine import SamplingOptions, beam_search, check_sampling, generate, sampling_kwargs, stop_strings, stream_text
from gptkit.errors import UsageError, run_cli
from gptkit.files import require_file
from gptkit.loading import load_any_checkpoint
from gptkit.options import option, parse_options
from gptkit.precision import DTYPES, for_generation
from gptkit.precision import HELP as DTYPE_HELP


@dataclass
class SampleConfig(SamplingOptions):
    ckpt: str = option("out", "a checkpoint file, the folder train.py wrote (best.pt, else last.pt), a Hugging Face GPT-2 folder "
                              "or one export.py wrote, or a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl)")
    prompt: str = option("", "text to continue (empty: start a new document)")
    prompt_file: str = option("", "read the prompt from this UTF-8 file instead")
    num_samples: int = option(1, "how many completions to print", bounds="[1, 100000]")
    beam_size: int = option(0, "beam search with this many beams instead of sampling: deterministic, length-normalised (0: sample)",
                            bounds="[0, 1024]")
    length_penalty: float = option(1.0, "beam search ranks by log-probability / length**length_penalty (0: raw log-probability)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", DTYPE_HELP, DTYPES)


def read_prompt(cfg):
    if not cfg.prompt_file:
        return cfg.prompt
    path = require_file(cfg.prompt_file, "--prompt_file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"--prompt_file={path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def completions(model, tokenizer, prompt_ids, cfg, index):
    """The token stream of completion number `index`: a beam search result, or a sample with its own seed."""
    stop_ids = {tokenizer.eot_id}
    if cfg.beam_size:
        return iter(beam_search(model, prompt_ids, cfg.beam_size, cfg.max_new_tokens, stop_ids, tokenizer.n_vocab, cfg.length_penalty))
    sampling = sampling_kwargs(cfg)
    sampling["seed"] = None if cfg.seed is None else cfg.seed + index
    return generate(model, prompt_ids, cfg.max_new_tokens, stop_ids=stop_ids, vocab_limit=tokenizer.n_vocab, **sampling)


def main():
    cfg = parse_options(SampleConfig, description=__doc__, positional=None)
    check_sampling(cfg)
    if cfg.beam_size and cfg.num_samples > 1:
        raise UsageError("beam search is deterministic: use --num_samples=1 with --beam_size")
    prompt = read_prompt(cfg)  # before the model loads: a bad path costs no wait
    device = pick_device(cfg.device)
    model, tokenizer = build_model(load_any_checkpoint(cfg.ckpt), device)
    for_generation(model, cfg.dtype, device)
    prompt_ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    for i in range(cfg.num_samples):
        if cfg.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        sys.stdout.write(prompt)
        tokens = (t for t in completions(model, tokenizer, prompt_ids, cfg, i) if t != tokenizer.eot_id)
        for piece in stream_text(tokens, tokenizer, stop_strings(cfg)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        print()


def cli():
    """The gptkit-sample command, and `python sample.py`."""
    torch.set_grad_enabled(False)
    run_cli(main)


if __name__ == "__main__":
    cli()
