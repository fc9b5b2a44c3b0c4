"""What each generation precision (gptkit/precision.py; --dtype of sample.py and chat.py) gains and costs:
python bench/precision.py --data=FILE_OR_PREPARED_FOLDER [--ckpt=out] [--key=value ...]

1. Speed: the matrix products of GPT-2 small's 12 blocks and output layer (weights read from memory, too large for the caches) for one
   row of input (a decode step at batch 1) and for --rows rows (a prompt), in float32 (also stored transposed, as
   gptkit/precision.py keeps float32 weights on a CPU), bfloat16, float16 and int8 (gptkit/weight_formats.py's layer):
   the measurements behind its choices ("mixed": float16 weights for one row, bfloat16 for many on CPUs with bfloat16
   instructions).
2. Quality on a checkpoint: --windows windows of --window tokens of the data, scored in each precision through the
   prompt path (each window in one forward pass) and the decode path (token by token through the KV cache, as
   generation runs): loss in nats per token and bits per byte, how often the most likely token is float32's, and the
   largest difference from float32's logits.
"""
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from gptkit.checkpoint import build_model
from gptkit.errors import UsageError, run_cli
from gptkit.evaluation import folder_tokens, text_tokens
from gptkit.loading import load_any_checkpoint
from gptkit.machine import describe_machine, reproduce_command
from gptkit.model import KVCache
from gptkit.options import check_rules, option, parse_options
from gptkit.precision import DTYPES, for_generation
from gptkit.weight_formats import Int8WeightLinear

BLOCK_LINEARS = [(3 * 768, 768), (768, 768), (4 * 768, 768), (768, 4 * 768)]  # (out, in) of each of GPT-2 small's blocks' layers
GPT2_SMALL_LINEARS = BLOCK_LINEARS * 12 + [(50257, 768)]  # and the output layer


@dataclass
class BenchConfig:
    ckpt: str = option("out", "the checkpoint whose quality is measured (file or folder, Hugging Face folder or hub name)")
    data: str = option("", "a UTF-8 text file, or a folder prepared by data/prepare.py with the checkpoint's tokenizer")
    dtypes: list[str] = option(["float32", "bfloat16", "float16", "mixed", "int8"], "the precisions to compare (float32 first: the reference)",
                               tuple(d for d in DTYPES if d != "auto"))
    windows: int = option(8, "windows of text scored")
    window: int = option(128, "tokens per window (at most the model's context)")
    rows: int = option(128, "rows of input of the prompt-sized matrix products")
    repeats: int = option(5, "passes over the matrix products; the median is reported")
    matmul_layers: int = option(len(GPT2_SMALL_LINEARS), "how many of GPT-2 small's linear layers the speed part multiplies (all 49: its 12 "
                                "blocks' 4 and the output layer; fewer, the first of the blocks', for a quick run)", bounds=f"[1, {len(GPT2_SMALL_LINEARS)}]")
    threads: int = option(0, "CPU threads for torch (0: torch's default)")
    seed: int = option(1337, "seed of the random weights and of where the windows start")


def matmul_speed(cfg):
    """Median seconds of one pass over GPT-2 small's block matrices, per weight format and number of input rows."""
    torch.manual_seed(cfg.seed)
    shapes = GPT2_SMALL_LINEARS[:cfg.matmul_layers]
    what = "12 blocks and output layer" if len(shapes) == len(GPT2_SMALL_LINEARS) else f"first {len(shapes)} linear layers"
    print(f"matrix products of GPT-2 small's {what} ({sum(o * i for o, i in shapes) / 1e6:.1f}M weights), median of {cfg.repeats} passes:")
    weights32 = [torch.randn(o, i) * 0.02 for o, i in shapes]
    formats = {"float32": (torch.float32, False), "float32 T": (torch.float32, True),  # T: stored transposed (gptkit/precision.py)
               "bfloat16": (torch.bfloat16, False), "float16": (torch.float16, False)}
    times = {}
    for label in [*formats, "int8"]:
        if label == "int8":  # float32 input and output, int8 weights with a float32 scale per row
            dtype, layers = torch.float32, [Int8WeightLinear(SimpleNamespace(weight=w, bias=None)) for w in weights32]
            weights = [layer.weight_int8 for layer in layers]
        else:
            dtype, transposed = formats[label]
            weights = [w.to(dtype) for w in weights32]
            weights = [w.t().contiguous().t() for w in weights] if transposed else weights
            layers = [partial(F.linear, weight=w) for w in weights]
        for rows in (1, cfg.rows):
            inputs = {n: torch.randn(rows, n, dtype=dtype) for n in (768, 4 * 768)}
            passes = []
            for _ in range(cfg.repeats + 1):  # the first pass warms up
                started = time.perf_counter()
                for layer, w in zip(layers, weights):
                    layer(inputs[w.shape[1]])
                passes.append(time.perf_counter() - started)
            times[label, rows] = float(np.median(passes[1:]))
        nbytes = sum(w.numel() * w.element_size() for w in weights)
        print(f"  {label:<9} 1 row: {1000 * times[label, 1]:7.2f} ms ({nbytes / times[label, 1] / 1e9:5.1f} GB/s of weights) | "
              f"{cfg.rows} rows: {1000 * times[label, cfg.rows]:7.2f} ms")
    for rows in (1, cfg.rows):
        speedups = ", ".join(f"{label} {times['float32', rows] / times[label, rows]:.2f}x" for label in [*list(formats)[1:], "int8"])
        print(f"  against float32, {rows} row{'s' * (rows > 1)}: {speedups} (higher: faster; T: float32 stored transposed)")


def text_windows(cfg, tokenizer, block_size):
    """--windows arrays of window + 1 tokens from evenly spread places of the data."""
    data = Path(cfg.data)
    if not data.exists():
        raise UsageError(f"--data={data} does not exist; pass a text file or a folder prepared by data/prepare.py")
    arrays = folder_tokens(data, "val", tokenizer, cfg.ckpt) if data.is_dir() else text_tokens(data, tokenizer)
    tokens = np.concatenate([np.asarray(a, dtype=np.int64) for a in arrays])
    if cfg.window > block_size:
        raise UsageError(f"--window={cfg.window} is longer than the model's context ({block_size} tokens); use at most {block_size}")
    if len(tokens) < cfg.window + 1:
        raise UsageError(f"{data} holds {len(tokens)} tokens; a window needs {cfg.window + 1}: use a shorter --window or more text")
    starts = np.linspace(0, len(tokens) - cfg.window - 1, cfg.windows).astype(int)
    return [torch.from_numpy(tokens[s:s + cfg.window + 1].copy()) for s in starts]


@torch.no_grad()
def window_logits(model, window, path):
    """Float32 logits (T, V) for each of a window's inputs, through the prompt path or the decode path."""
    x = window[None, :-1]
    if path == "prompt":
        return model(x)[0].float()
    param = next(model.parameters())
    cache = KVCache(model.config, 1, x.shape[1], param.device, dtype=param.dtype)
    return torch.cat([model(x[:, t:t + 1], kv_cache=cache)[0].float() for t in range(x.shape[1])])


def quality(cfg):
    """Each precision's loss, bits per byte, agreement with float32's most likely token and largest logit difference."""
    ckpt = load_any_checkpoint(cfg.ckpt)
    model, tokenizer = build_model(ckpt, "cpu")
    windows = text_windows(cfg, tokenizer, model.config.block_size)
    byte_lengths = torch.tensor(tokenizer.token_byte_lengths())
    n_tokens = cfg.windows * cfg.window
    n_bytes = int(sum(byte_lengths[w[1:]].sum() for w in windows))
    print(f"quality: {ckpt['path']} ({model.num_params() / 1e6:.2f}M parameters), {cfg.windows} windows of {cfg.window} tokens "
          f"({n_tokens:,} tokens, {n_bytes:,} bytes) of {cfg.data}")
    reference = {}
    for name in cfg.dtypes:
        model, _ = build_model(ckpt, "cpu")
        used = for_generation(model, name, "cpu")
        for path in ("prompt", "decode"):
            logits = [window_logits(model, w, path) for w in windows]
            targets = torch.cat([w[1:] for w in windows])
            logits = torch.cat(logits)
            loss = F.cross_entropy(logits, targets, reduction="sum").item()
            reference.setdefault(path, logits)
            same_top = (logits.argmax(-1) == reference[path].argmax(-1)).float().mean().item()
            diff = (logits - reference[path]).abs().max().item()
            print(f"  {used:<9} {path + ' path:':<13} loss {loss / n_tokens:.4f} nats/token, {loss / n_bytes / np.log(2):.4f} bits/byte | "
                  f"top token as float32 {100 * same_top:6.2f}% | largest logit difference {diff:.4f}", flush=True)


def check_config(cfg):
    check_rules(cfg, [("windows", cfg.windows >= 1, "must be at least 1"), ("window", cfg.window >= 1, "must be at least 1"),
                      ("rows", cfg.rows >= 2, "must be at least 2"), ("repeats", cfg.repeats >= 1, "must be at least 1"),
                      ("threads", cfg.threads >= 0, "must not be negative")])
    if not cfg.dtypes or cfg.dtypes[0] != "float32":
        raise UsageError(f"--dtypes={','.join(cfg.dtypes)}: list precisions from float32, bfloat16, float16, mixed, int8, starting with float32 "
                         "(the reference)")
    if not cfg.data:
        raise UsageError("--data is required: a text file, or a folder prepared by data/prepare.py with the checkpoint's tokenizer "
                         "(python train.py prepares prepared/stdlib-...-bpe4096 for out/)")


def main():
    cfg = parse_options(BenchConfig, description=__doc__, positional=None)
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    print(describe_machine("cpu"))
    matmul_speed(cfg)
    quality(cfg)
    print(f"reproduce: {reproduce_command('bench/precision.py', cfg, always=('ckpt', 'data', 'windows', 'window'))}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_cli(main)
