"""Scoring a model: loss in nats per token and bits per byte, during training (evaluate) and of a checkpoint on any text
(evaluate_checkpoint, what evaluate.py runs)."""
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gptkit.checkpoint import build_model
from gptkit.devices import autocast_for, pick_device
from gptkit.distributed import Distributed
from gptkit.errors import UsageError
from gptkit.loader import sequential_windows
from gptkit.loading import load_any_checkpoint
from gptkit.options import check_values, option
from gptkit.shards import TOKENIZER_FILE, load_split, read_meta
from gptkit.tokenizer import Tokenizer


@torch.no_grad()
def evaluate(model, batches, byte_lengths, device, autocast, dist=Distributed()):
    """Mean loss in nats per target token, and bits per byte over the text tokens (special tokens carry no bytes).

    Targets of -1 (fine-tuning: not the assistant's tokens, or padding) are not scored.
    """
    model.eval()
    nats = tokens = text_nats = text_bytes = 0.0
    for x, y in batches:
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        with autocast, dist.evaluation():
            losses = dist.full_value(model(x, y, reduction="none")).view(y.shape)
        scored = y >= 0
        n_bytes = byte_lengths[y.clamp(min=0)] * scored
        nats += losses.sum().item()  # 0 where not scored
        tokens += scored.sum().item()
        text_nats += losses[n_bytes > 0].sum().item()
        text_bytes += n_bytes.sum().item()
    model.train()
    if dist.active:  # each rank scored a share of the batches
        nats, tokens, text_nats, text_bytes = dist.sum(nats, tokens, text_nats, text_bytes)
    return {"val_loss": nats / tokens, "val_bpb": text_nats / math.log(2) / max(1.0, text_bytes)}


@dataclass
class EvalConfig:
    ckpt: str = option("out", "a checkpoint file or folder, a Hugging Face GPT-2 folder, or a hub name like gpt2")
    data: str = option("", "a UTF-8 text file, or a folder prepared by data/prepare.py with the checkpoint's tokenizer")
    split: str = option("val", "the split of a prepared folder", ("train", "val"))
    block_size: int = option(0, "tokens per window, at most the model's context (0: the model's context)", bounds="[0, 1048576]")
    batch_size: int = option(8, "windows per forward pass", bounds="[1, 1048576]")
    max_tokens: int = option(0, "score at most this many tokens (0: all)", bounds=">=0")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "auto: bfloat16 autocast on CUDA, float32 elsewhere", ("auto", "float32", "bfloat16"))
    json: bool = option(False, "print one JSON object instead of the summary line")


def text_tokens(path, tokenizer):
    """The file's text as token ids, with the one check a user needs: that it is non-empty UTF-8."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    if not text:
        raise UsageError(f"{path} is empty; there is nothing to score")
    print(f"tokenizing {path} ({len(text.encode('utf-8')):,} bytes) with the checkpoint's {tokenizer.kind} tokenizer", file=sys.stderr, flush=True)
    return [np.asarray(tokenizer.encode(text), dtype=np.int64)]


def folder_tokens(folder, split, tokenizer, ckpt_path):
    """The split's shards (memory-mapped), refused when they were tokenized differently from the checkpoint."""
    read_meta(folder)  # a clear error for a folder that is not prepared data
    saved = folder / TOKENIZER_FILE
    if not saved.is_file():
        raise UsageError(f"{saved} is missing; prepare the data again")
    if saved.read_text() != tokenizer.to_json():
        theirs = Tokenizer.from_json(saved.read_text())
        raise UsageError(f"{folder} was prepared with a different tokenizer ({theirs.kind}, {theirs.n_vocab} ids) than {ckpt_path} "
                         f"({tokenizer.kind}, {tokenizer.n_vocab} ids); pass a text file instead (--data=FILE is tokenized with "
                         f"the checkpoint's tokenizer) or prepare the data with the checkpoint's")
    return load_split(folder, split)


def windows(arrays, eot_id, block_size, batch_size, max_tokens):
    """(batches, number of batches, tokens scored): every token of `arrays` scored once, up to max_tokens.

    The text is read as following an <|endoftext|>, as every document but the first does in prepared shards, so its
    first token is scored too and every byte counts, whatever the tokenizer. Windows do not overlap; each array's
    tail, shorter than a window, is scored as one last, shorter window rather than dropped.
    """
    first = arrays[0]
    # [eot] + first, without copying a large memory-mapped shard: its first window, then the rest from that window's
    # last token (which is the next window's first input), exactly the windows sequential_windows makes of the whole.
    head = np.concatenate([[eot_id], np.asarray(first[:block_size], dtype=np.int64)])
    pieces = [head, first[block_size - 1:]] if len(first) > block_size else [head]
    pieces += arrays[1:]
    budget = max_tokens or math.inf
    plan, n_batches = [], 0
    for piece in pieces:
        n = int(min(len(piece) - 1, budget))
        if n <= 0:
            continue
        full = n // block_size * block_size
        if full:
            plan.append(piece[:full + 1])
            n_batches += math.ceil(full // block_size / batch_size)
        if n > full:
            plan.append(piece[full:n + 1])  # sequential_windows scores an array shorter than the context whole
            n_batches += 1
        budget -= n
        if budget <= 0:
            break
    return sequential_windows(plan, batch_size, block_size), n_batches, sum(len(p) - 1 for p in plan)


def counted(batches, byte_lengths, counts):
    """Pass batches through, adding up the target tokens and the text bytes they stand for."""
    for x, y in batches:
        counts["tokens"] += y.size
        counts["bytes"] += int(byte_lengths[y].sum())
        yield x, y


def check(cfg):
    check_values(cfg)
    if not cfg.data:
        raise UsageError("--data is required: a text file, or a folder prepared by data/prepare.py")


def evaluate_checkpoint(cfg):
    """Score the checkpoint on the data; returns the result as a dict (what --json prints)."""
    check(cfg)
    data = Path(cfg.data)
    if not data.exists():
        raise UsageError(f"--data={data} does not exist; pass a text file or a folder prepared by data/prepare.py")
    if data.is_file() and cfg.split != "val":
        raise UsageError(f"--split applies to prepared folders; {data} is a text file and is scored whole")
    ckpt = load_any_checkpoint(cfg.ckpt)
    device = pick_device(cfg.device)
    model, tokenizer = build_model(ckpt, device)
    context = model.config.block_size
    if cfg.block_size > context:
        raise UsageError(f"--block_size={cfg.block_size} is longer than the model's context ({context} tokens); use at most {context}")
    block_size = cfg.block_size or context

    folder = data.is_dir()
    arrays = folder_tokens(data, cfg.split, tokenizer, ckpt["path"]) if folder else text_tokens(data, tokenizer)
    batches, n_batches, n_tokens = windows(arrays, tokenizer.eot_id, block_size, cfg.batch_size, cfg.max_tokens)
    if n_tokens == 0:
        raise UsageError(f"{data} holds no tokens to score")

    use_bf16, autocast = autocast_for(cfg.dtype, device)
    lengths = tokenizer.token_byte_lengths()
    counts = {"tokens": 0, "bytes": 0}
    progress = tqdm(counted(batches, np.asarray(lengths), counts), total=n_batches, unit="batch", desc="scoring", disable=None)
    metrics = evaluate(model, progress, torch.tensor(lengths, device=device), device, autocast)
    progress.close()

    loss, bpb = metrics["val_loss"], metrics["val_bpb"]
    command = ["python", "evaluate.py", f"--ckpt={ckpt['path']}", f"--data={data}", *([f"--split={cfg.split}"] if folder else []),
               f"--block_size={block_size}", *([f"--max_tokens={cfg.max_tokens}"] if cfg.max_tokens else []),
               f"--dtype={'bfloat16' if use_bf16 else 'float32'}"]
    return {
        "ckpt": ckpt["path"], "data": str(data), "split": cfg.split if folder else None,
        "loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf, "bpb": bpb,
        "tokens": counts["tokens"], "bytes": counts["bytes"], "block_size": block_size,
        "tokenizer": tokenizer.kind, "n_vocab": tokenizer.n_vocab, "dtype": "bfloat16" if use_bf16 else "float32",
        "command": shlex.join(command),
    }


def summary(result):
    where = f"{result['data']} ({result['split']} split)" if result["split"] else result["data"]
    return (f"{result['ckpt']} on {where}: loss {result['loss']:.4f} nats/token, perplexity {result['perplexity']:.2f}, "
            f"{result['bpb']:.4f} bits/byte ({result['tokens']:,} tokens, {result['bytes']:,} bytes, "
            f"{result['tokenizer']} tokenizer, windows of {result['block_size']})")
