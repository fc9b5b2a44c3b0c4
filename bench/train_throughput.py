"""Training throughput: python bench/train_throughput.py [--preset=gpt2|modern] [--size=gpt2] [--compile=both] [--key=value ...]

Tokens per second, MFU and peak memory of train.py's own training step (forward, backward, gradient clipping and AdamW,
fused on CUDA) on GPT-2 small's sizes by default, context 1024: bf16 autocast on CUDA, float32 elsewhere; eager and
compiled (torch.compile) on CUDA by default. The micro-batch is the largest that fits on CUDA, searched by powers of
two down from --max_batch; 1 elsewhere, or --batch_size. A few warm-up steps (which compile), then --steps timed
steps over random tokens, or over random windows of a prepared data folder with --data_dir.

MFU is model.flops_per_token() x tokens/s over the GPU's dense bf16 peak (train.PEAK_FLOPS); n/a on CPUs and unknown
GPUs. Peak memory is torch.cuda.max_memory_allocated on CUDA, the process's peak resident set size elsewhere.
For a quick run on a CPU: --n_layer=2 --n_head=2 --n_embd=64 --block_size=64 --steps=3.
"""
import gc
import resource
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from gptkit.devices import autocast_for, pick_device
from gptkit.errors import UsageError, first_line, run_cli
from gptkit.loader import RandomWindows
from gptkit.machine import describe_machine, reproduce_command, sync
from gptkit.metrics import peak_flops
from gptkit.model import GPT, GPT2_SIZES, PRESETS
from gptkit.objectives import NextToken
from gptkit.optim import make_optimizers, train_step
from gptkit.options import option, parse_options
from gptkit.shards import load_split, read_meta
from gptkit.spike_guard import SpikeGuard
from gptkit.train_config import TrainConfig, model_config

RANDOM_TOKENS = 1 << 20  # length of the random token stream the windows are cut from


@dataclass
class BenchConfig:
    preset: str = option("gpt2", "architecture preset", tuple(PRESETS))
    size: str = option("gpt2", "GPT-2 size (layers, heads, width)", tuple(GPT2_SIZES))
    n_layer: int = option(0, "override the size's number of layers (0: the size's)")
    n_head: int = option(0, "override the size's number of heads (0: the size's)")
    n_embd: int = option(0, "override the size's width (0: the size's)")
    block_size: int = option(1024, "context length: tokens per sequence")
    vocab_size: int = option(50257, "vocabulary of the random tokens, padded to a multiple of 64 as train.py pads it (--data_dir: the data's)")
    data_dir: str = option("", "a folder prepared by data/prepare.py: train on random windows of its train split instead of random tokens")
    batch_size: int = option(0, "sequences per micro-batch (0: on CUDA the largest that fits, searched down from --max_batch; 1 elsewhere)")
    max_batch: int = option(64, "where the batch-size search starts (a power of two)")
    steps: int = option(20, "timed training steps")
    warmup_steps: int = option(3, "untimed steps first (they compile, with torch.compile)")
    compile: str = option("auto", "eager, compiled or both (auto: both on CUDA, eager elsewhere)", ("auto", "both", "true", "false"))
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "auto: bfloat16 autocast on CUDA, float32 elsewhere", ("auto", "float32", "bfloat16"))
    threads: int = option(0, "CPU threads for torch (0: torch's default)")
    seed: int = option(1337, "seed of the weights and the batches")


def check_config(cfg):
    for key in ("block_size", "max_batch", "steps"):
        if getattr(cfg, key) <= 0:
            raise UsageError(f"--{key}={getattr(cfg, key)} must be positive")
    for key in ("n_layer", "n_head", "n_embd", "batch_size", "warmup_steps", "threads"):
        if getattr(cfg, key) < 0:
            raise UsageError(f"--{key}={getattr(cfg, key)} must not be negative")


def train_config(cfg, batch_size):
    """The TrainConfig train.py would run with: the model's sizes, AdamW, this micro-batch."""
    n_layer, n_head, n_embd = GPT2_SIZES[cfg.size]
    return TrainConfig(preset=cfg.preset, n_layer=cfg.n_layer or n_layer, n_head=cfg.n_head or n_head, n_embd=cfg.n_embd or n_embd,
                       block_size=cfg.block_size, batch_size=batch_size, optimizer="adamw", warmup_iters=0,
                       max_iters=cfg.warmup_steps + cfg.steps, seed=cfg.seed)


def token_arrays(cfg, vocab_size):
    if cfg.data_dir:
        return load_split(cfg.data_dir, "train", verify=False)  # a benchmark: no need to hash every shard first
    return [np.random.default_rng(cfg.seed).integers(0, vocab_size, size=max(RANDOM_TOKENS, 2 * (cfg.block_size + 1)), dtype=np.uint32)]


def peak_memory(device):
    if device.startswith("cuda"):
        return f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (CUDA, allocated)"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    gib = kib / 2**30 if sys.platform == "darwin" else kib / 2**20
    return f"peak memory {gib:.2f} GiB (process peak RSS so far)"


def timed_run(cfg, config, arrays, batch_size, device, autocast, compiled):
    """Build the model and optimizer, run the warm-up steps, then time cfg.steps steps. Returns the figures."""
    torch.manual_seed(cfg.seed)
    model = GPT(config).to(device)
    tcfg = train_config(cfg, batch_size)
    optimizers = make_optimizers(model, tcfg, device)
    train_model = torch.compile(model) if compiled else model
    batches = RandomWindows(arrays, batch_size, cfg.block_size, cfg.seed)
    objective = NextToken(None, batches, None, "random token windows")  # train.py's pretraining loss
    spikes = SpikeGuard(0.0)  # off: every step updates
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for step in range(cfg.warmup_steps):
        train_step(train_model, model, optimizers, objective, batches, tcfg, step, device, autocast, spikes)
    sync(device)
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    for step in range(cfg.warmup_steps, cfg.warmup_steps + cfg.steps):
        loss, *_ = train_step(train_model, model, optimizers, objective, batches, tcfg, step, device, autocast, spikes)
    sync(device)
    elapsed = time.perf_counter() - started
    return {"tokens_per_s": batch_size * cfg.block_size * cfg.steps / elapsed, "elapsed_s": elapsed, "warmup_s": warmup_s,
            "memory": peak_memory(device), "loss": loss}


def free_memory(device, compiled):
    gc.collect()
    if compiled:
        torch._dynamo.reset()  # compiled graphs hold on to the model they were traced for
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def measure(cfg, config, arrays, device, autocast, compiled, start_batch):
    """(batch size, sizes that did not fit, figures) at the largest micro-batch that fits, or at --batch_size."""
    if cfg.batch_size:
        candidates = [cfg.batch_size]
    elif device.startswith("cuda"):
        candidates = [start_batch >> i for i in range(start_batch.bit_length())]  # start_batch, half of it, ..., 1
    else:
        candidates = [1]
    too_big = []
    for batch_size in candidates:
        out_of_memory = False
        try:
            return batch_size, too_big, timed_run(cfg, config, arrays, batch_size, device, autocast, compiled)
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True  # freed below, once the exception no longer holds the failed run's tensors
        finally:
            free_memory(device, compiled)
        if out_of_memory:
            too_big.append(batch_size)
    more = "use a smaller --batch_size, or --batch_size=0 to search" if cfg.batch_size else "even a micro-batch of 1 does not fit"
    raise UsageError(f"out of GPU memory at --block_size={cfg.block_size}: {more}")


def main():
    cfg = parse_options(BenchConfig, description=__doc__, positional=None)
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    use_bf16, autocast = autocast_for(cfg.dtype, device)
    vocab_size = read_meta(cfg.data_dir)["vocab_size"] if cfg.data_dir else cfg.vocab_size
    config = model_config(train_config(cfg, 1), vocab_size)
    arrays = token_arrays(cfg, vocab_size)
    with torch.device("meta"):
        shape = GPT(config)  # parameter count and FLOPs without allocating
    flops_per_token, peak = shape.flops_per_token(), peak_flops(device)
    variants = {"auto": (False, True) if device.startswith("cuda") else (False,), "both": (False, True), "true": (True,), "false": (False,)}[cfg.compile]

    print(describe_machine(device))
    print(f"model: {cfg.preset} preset, {config.n_layer} layers x {config.n_embd} wide, {config.n_head} heads, context {config.block_size}, "
          f"vocabulary {config.vocab_size:,}: {shape.num_params() / 1e6:.2f}M parameters, {flops_per_token / 1e9:.3g} GFLOP per token (forward and backward)")
    data = f"random windows of {cfg.data_dir} (train split, {sum(len(a) for a in arrays):,} tokens)" if cfg.data_dir else "random tokens"
    print(f"training: train.py's train_step (forward, backward, clip, AdamW{' fused' if device.startswith('cuda') else ''}), "
          f"{'bf16 autocast' if use_bf16 else 'float32'} on {device}, {data}; {cfg.warmup_steps} warm-up steps, then {cfg.steps} timed", flush=True)

    rates, start_batch = {}, cfg.max_batch
    for compiled in variants:
        name = "compiled" if compiled else "eager"
        try:
            batch_size, too_big, figures = measure(cfg, config, arrays, device, autocast, compiled, start_batch)
        except UsageError:
            raise
        except Exception as e:
            if not compiled:
                raise
            print(f"{name + ':':<10} compile: failed ({type(e).__name__}: {first_line(e)})", flush=True)
            continue
        rates[name] = figures["tokens_per_s"]
        if not compiled:
            start_batch = min(cfg.max_batch, 2 * batch_size)  # a compiled step needs no more memory than an eager one
        searched = f" ({', '.join(map(str, too_big))} did not fit)" if too_big else ""
        mfu = f"MFU {100 * flops_per_token * figures['tokens_per_s'] / peak:.1f}%" if peak else "MFU n/a"
        warmup = f"warm-up (compiling) {figures['warmup_s']:.1f} s" if compiled else f"warm-up {figures['warmup_s']:.1f} s"
        print(f"{name + ':':<10} batch {batch_size} x {cfg.block_size}{searched} | {figures['tokens_per_s']:,.0f} tokens/s | {mfu} | "
              f"{figures['memory']} | {cfg.steps} steps in {figures['elapsed_s']:.2f} s, {warmup} | loss {figures['loss']:.3f}", flush=True)
    if len(rates) == 2:
        print(f"compiled / eager: {rates['compiled'] / rates['eager']:.2f}x tokens/s")
    print(f"reproduce: {reproduce_command('bench/train_throughput.py', cfg, always=('preset', 'size', 'block_size', 'batch_size', 'steps', 'compile'))}")


if __name__ == "__main__":
    run_cli(main)
