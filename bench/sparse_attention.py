"""Sparse attention against dense: python bench/sparse_attention.py [CONFIG] [--key=value ...]

Local (banded) layers cut attention's work and a local layer's KV cache to the window; this measures what that buys
and what it costs, for the pattern and window under test (--pattern, --window; the recommended ones by default):

- quality: validation bits per byte after training dense and each of --runs (same steps, tokens, batches and seed)
  at context --quality_context; the model and data are train.py's (CONFIG and train.py options: default.py's);
- speed: training tokens/s (forward, backward and an AdamW step, batch 1, random tokens) of the same model at each of
  --speed_contexts, dense and each run measured in turn --speed_repeats times (the best of each is kept);
- cache memory: KVCache bytes per token of context of a 124M-shaped model (--chat_layers x --chat_width), allocated
  at --memory_context, and at 32K tokens by arithmetic (a global layer holds every token, a local one a fixed ring);
- chat: time to first token at turn --chat_turns over turn 1 of a ChatSession (bench/generate.py's conversation:
  user turns of --turn_tokens bytes tokens, short greedy replies) with the 124M-shaped model in --chat_dtype.

Ends with one line: sparse_attention: pattern=... window=... bpb_dense=... bpb_pattern=... speedup_4096=...
cache_ratio=... chat_ttft_ratio=... (cache_ratio at 32K tokens; speedup at the longest of --speed_contexts).
"""
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from gptkit.chat_timing import chat_conversation
from gptkit.devices import pick_device
from gptkit.errors import UsageError, run_cli
from gptkit.machine import describe_machine
from gptkit.model import GPT, RING_SLACK, GPTConfig, KVCache
from gptkit.options import option, parse_options
from gptkit.precision import DTYPES, for_generation
from gptkit.shards import read_meta
from gptkit.tokenizer import byte_tokenizer
from gptkit.train import train
from gptkit.train_config import TrainConfig, model_config

PARTS = ("quality", "speed", "memory", "chat")
LONG_CONTEXT = 32768


@dataclass
class BenchConfig:
    pattern: str = option("LLLG", "the pattern under test: L local, G global (model.py's attn_pattern)")
    window: int = option(256, "the window under test: keys a local layer's query sees, itself included", bounds=">=1")
    runs: list[str] = option(["LG:256", "LLLG:128"], "more PATTERN:WINDOW variants trained and timed beside dense and the one under test")
    parts: list[str] = option(list(PARTS), "which measurements to run", PARTS)
    work_dir: str = option("out_sparse", "where the quality runs write their checkpoints and metrics")
    quality_context: int = option(1024, "context length of the quality runs", bounds=">=2")
    quality_steps: int = option(120, "training steps of each quality run", bounds=">=1")
    quality_batch: int = option(4, "sequences per step of the quality runs", bounds=">=1")
    speed_contexts: list[int] = option([1024, 2048, 4096], "context lengths of the speed measurement", bounds=">=2")
    speed_steps: int = option(3, "timed training steps per speed measurement", bounds=">=1")
    speed_repeats: int = option(3, "times dense and each variant are measured in turn (the best is kept)", bounds=">=1")
    memory_context: int = option(4096, "context of the KV caches allocated for the memory figure", bounds=">=1")
    chat_layers: int = option(12, "layers of the memory and chat model (12 x 768: GPT-2 small's shape, 124M)", bounds=">=1")
    chat_heads: int = option(12, "heads of the memory and chat model", bounds=">=1")
    chat_width: int = option(768, "width of the memory and chat model", bounds=">=1")
    chat_context: int = option(2048, "context length of the chat model", bounds=">=2")
    chat_turns: int = option(10, "user turns of the chat measurement", bounds=">=2")
    turn_tokens: int = option(150, "tokens per user turn", bounds=">=1")
    reply_tokens: int = option(8, "tokens per greedy reply", bounds=">=1")
    chat_repeats: int = option(3, "conversations per model (the median is kept)", bounds=">=1")
    chat_dtype: str = option("auto", "precision of the chat model (auto: what chat.py picks here: mixed on a CPU with fast bfloat16, else float32)", DTYPES)
    seed: int = option(1337, "seed of the weights, the batches and the chat turns")


def variants(cfg):
    """[(label, attn_pattern, window)]: dense first, then the pattern under test, then the other runs."""
    found = [("dense", "", 0), (f"{cfg.pattern}:{cfg.window}", cfg.pattern, cfg.window)]
    for run in cfg.runs:
        pattern, _, window = run.partition(":")
        if not window.isdigit() or int(window) < 1:  # the pattern itself is GPTConfig's to check (check_variants)
            raise UsageError(f"--runs: {run!r} is not PATTERN:WINDOW, e.g. LG:256 (L local, G global, a window of at least 1)")
        if (run, pattern, int(window)) not in found:
            found.append((run, pattern, int(window)))
    return found


def check_variants(cfg, base, found):
    """Each variant must fit both models (a pattern no longer than their layers) before hours of measuring start."""
    for label, pattern, window in found:
        try:
            replace(base, attn_pattern=pattern, window=window)
            reference_config(cfg, pattern, window, LONG_CONTEXT)
        except ValueError as e:
            raise UsageError(f"{label}: {e}") from None


# --- quality ---------------------------------------------------------------------------------------------------------

def quality(cfg, run, found):
    """{label: final validation bits per byte} of one training run per variant, all alike but the attention."""
    results = {}
    for label, pattern, window in found:
        out_dir = Path(cfg.work_dir) / label.replace(":", "-w")
        print(f"\n--- quality: training {label} at context {cfg.quality_context} into {out_dir} ---", flush=True)
        train(replace(run, out_dir=str(out_dir), resume="false", attn_pattern=pattern, window=window, block_size=cfg.quality_context,
                      batch_size=cfg.quality_batch, max_iters=cfg.quality_steps, eval_interval=cfg.quality_steps, sample_tokens=0))
        evals = [r for r in map(json.loads, (out_dir / "metrics.jsonl").read_text().splitlines()) if "val_bpb" in r]
        results[label] = evals[-1]["val_bpb"]
    return results


# --- speed -----------------------------------------------------------------------------------------------------------

def tokens_per_second(config, steps, seed):
    """Training tokens/s of `config` at its full context, batch 1: forward, backward and an AdamW step."""
    torch.manual_seed(seed)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, config.vocab_size, (1, config.block_size + 1))

    def step():
        model(x[:, :-1], x[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocations, first-call costs
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * config.block_size / (time.perf_counter() - started)


def speed(cfg, base, found):
    """{context: {label: [tokens/s of each repeat]}}, dense and the variants measured in turn so drift hits all alike."""
    results = {}
    for T in cfg.speed_contexts:
        results[T] = {label: [] for label, _, _ in found}
        for _ in range(cfg.speed_repeats):
            for label, pattern, window in found:
                config = replace(base, block_size=T, attn_pattern=pattern, window=window)
                results[T][label].append(tokens_per_second(config, cfg.speed_steps, cfg.seed))
        dense = max(results[T]["dense"])
        line = ", ".join(f"{label} {max(r):,.0f} ({max(r) / dense:.2f}x)" for label, r in results[T].items())
        print(f"  context {T:5d}: tokens/s {line}", flush=True)
    return results


# --- memory ----------------------------------------------------------------------------------------------------------

def reference_config(cfg, pattern, window, block_size):
    return GPTConfig.from_preset("gpt2", n_layer=cfg.chat_layers, n_head=cfg.chat_heads, n_embd=cfg.chat_width, block_size=block_size,
                                 attn_pattern=pattern, window=window)


def cache_bytes_by_arithmetic(config, context):
    """Keys and values in float32: a global layer holds `context` positions, a local one window + RING_SLACK."""
    slots = sum(min(w + RING_SLACK, context) if (w := config.layer_window(layer)) else context for layer in range(config.n_layer))
    return 2 * slots * config.n_embd * 4


def memory(cfg, found):
    """{label: (measured bytes per token at memory_context, bytes per token at 32K by arithmetic)}."""
    results = {}
    for label, pattern, window in found:
        config = reference_config(cfg, pattern, window, LONG_CONTEXT)
        measured = KVCache(config, 1, cfg.memory_context, "cpu").nbytes()
        expected = cache_bytes_by_arithmetic(config, cfg.memory_context)
        if measured != expected:
            raise RuntimeError(f"{label}: the cache holds {measured:,} bytes, the arithmetic says {expected:,}")
        results[label] = (measured / cfg.memory_context, cache_bytes_by_arithmetic(config, LONG_CONTEXT) / LONG_CONTEXT)
    return results


# --- chat ------------------------------------------------------------------------------------------------------------

def chat(cfg, found, device):
    """{label: (turn 1 ttft, last turn ttft)} in seconds, medians of chat_repeats conversations each."""
    tokenizer = byte_tokenizer()
    results = {}
    for label, pattern, window in found[:2]:  # dense and the pattern under test
        config = replace(reference_config(cfg, pattern, window, cfg.chat_context), vocab_size=-(-tokenizer.n_vocab // 64) * 64)
        torch.manual_seed(cfg.seed)
        model = GPT(config).to(device).eval()
        used = for_generation(model, cfg.chat_dtype, device)
        rng = random.Random(cfg.seed)
        with torch.no_grad():
            chat_conversation(model, tokenizer, replace(cfg, chat_turns=1), rng)  # warm-up
            runs = [chat_conversation(model, tokenizer, cfg, rng) for _ in range(cfg.chat_repeats)]
        first, last = (statistics.median(run[i]["ttft_s"] for run in runs) for i in range(2))
        results[label] = (first, last)
        print(f"  {label:>10} ({used}): turn 1 {1000 * first:7.1f} ms, turn {cfg.chat_turns} {1000 * last:7.1f} ms "
              f"(prefilled {runs[-1][1]['prefilled']}, reused {runs[-1][1]['reused']}): {last / first:.2f}x", flush=True)
    return results


# --- the report ------------------------------------------------------------------------------------------------------

def split_args(argv):
    """(bench options, train.py options and config files)."""
    keys = {f"--{name}" for name in BenchConfig.__dataclass_fields__}
    bench = [a for a in argv if a.split("=")[0] in keys or a in ("-h", "--help")]
    return bench, [a for a in argv if a not in bench]


def main():
    bench_args, train_args = split_args(sys.argv[1:])
    cfg = parse_options(BenchConfig, bench_args, description=__doc__, positional=None)
    run = parse_options(TrainConfig, train_args, description=__doc__, default_config="default")
    found = variants(cfg)
    under_test = found[1][0]
    vocab = read_meta(run.data_dir)["vocab_size"] if run.data_dir else run.vocab_size
    base = model_config(run, vocab)
    check_variants(cfg, base, found)
    device = pick_device(run.device)
    print(describe_machine(device))
    print(f"under test: {cfg.pattern} with window {cfg.window}; also {', '.join(label for label, _, _ in found[2:]) or 'nothing else'}")
    figures = {}

    if "quality" in cfg.parts:
        bpb = quality(cfg, run, found)
        print(f"\nquality: validation bits per byte after {cfg.quality_steps} steps of {cfg.quality_batch} x {cfg.quality_context} tokens "
              f"({run.preset}, {run.n_layer} layers x {run.n_embd}, data {run.data_dir or 'the built-in corpus'}):")
        for label, value in bpb.items():
            print(f"  {label:>10}: {value:.4f} ({100 * (value / bpb['dense'] - 1):+.2f}% against dense)")
        figures["bpb_dense"], figures["bpb_pattern"] = bpb["dense"], bpb[under_test]

    if "speed" in cfg.parts:
        print(f"\nspeed: training tokens/s, batch 1, {base.n_layer} layers x {base.n_embd}, {base.n_head} heads, vocabulary {base.vocab_size:,}, "
              f"{torch.get_num_threads()} threads, best of {cfg.speed_repeats} (x: against dense)", flush=True)
        results = speed(cfg, base, found)
        longest = max(cfg.speed_contexts)
        figures[f"speedup_{longest}"] = max(results[longest][under_test]) / max(results[longest]["dense"])

    if "memory" in cfg.parts:
        results = memory(cfg, found)
        print(f"\ncache memory (float32 keys and values) of a {cfg.chat_layers} x {cfg.chat_width} model, per token of context:")
        for label, (measured, long) in results.items():
            print(f"  {label:>10}: {measured / 1024:6.1f} KiB allocated at {cfg.memory_context:,} tokens; {long / 1024:6.1f} KiB at "
                  f"{LONG_CONTEXT:,} ({long * LONG_CONTEXT / 2**30:.2f} GiB, {long / results['dense'][1]:.2f}x dense)")
        figures["cache_ratio"] = results[under_test][1] / results["dense"][1]

    if "chat" in cfg.parts:
        print(f"\nchat: time to first token, {cfg.chat_layers} x {cfg.chat_width} model, context {cfg.chat_context}, {cfg.chat_turns} turns of "
              f"{cfg.turn_tokens} tokens, median of {cfg.chat_repeats} conversations", flush=True)
        results = chat(cfg, found, device)
        first, last = results[under_test]
        figures["chat_ttft_ratio"] = last / first

    print(f"reproduce: python bench/sparse_attention.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"sparse_attention: pattern={cfg.pattern} window={cfg.window} " + " ".join(f"{k}={v:.3f}" for k, v in figures.items()))


if __name__ == "__main__":
    run_cli(main)
