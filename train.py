"""Train a GPT: python train.py [CONFIG ...] [--key=value ...]

With no arguments it runs config/default.py: prepares the built-in corpus (Python's standard library) if needed,
trains a small model, evaluates it, saves checkpoints under out/ and prints a sample.
"""
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from chat_session import reply_accuracy
from checkpoint import BEST, LAST, load_any_checkpoint, load_checkpoint, save_checkpoint, save_rotating
from common import UsageError, autocast_for, pick_device, run_cli
from data.chat import conversation_rows, dataset_conversations, read_conversations
from data.loader import ConversationBatches, RandomWindows, conversation_batches, sequential_windows
from data.prepare import PrepareConfig, default_data_dir, prepare
from data.shards import TOKENIZER_FILE, is_prepared, load_split, read_meta
from data.tokenizer import KINDS, Tokenizer
from distributed import Distributed, checkpoint_activations, launched_world_size
from generate import TextStream, generate
from model import GPT, PRESETS, GPTConfig
from model_card import write_model_card
from options import check_choices, option, parse_options

# Dense bf16 peak FLOP/s of known GPUs, for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


@dataclass
class TrainConfig:
    out_dir: str = option("out", "folder for checkpoints (last.pt, best.pt) and metrics.jsonl")
    # data
    data_dir: str = option("", "a folder prepared by data/prepare.py; empty: prepare the source below into prepared/")
    data_path: str = option("", "a text file, folder or glob to train on (empty, with no --dataset: the built-in corpus)")
    dataset: str = option("", "a Hugging Face dataset name to train on, read through `datasets`")
    text_field: str = option("text", "the text field of .jsonl files and datasets")
    tokenizer: str = option("bpe", "tokenizer used when preparing data", KINDS)
    vocab_size: int = option(4096, "vocabulary size of a trained bpe tokenizer")
    val_fraction: float = option(0.01, "fraction of the data held out for validation when preparing")
    # fine-tuning
    init_from: str = option("", "start from this checkpoint (file, or folder with best.pt/last.pt), a Hugging Face GPT-2 folder, "
                                "or a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl): its model, weights and tokenizer")
    chat_data: str = option("", "fine-tune on conversations: a .jsonl file with one {\"messages\": [...]} per line, or `demo` (data/synthetic_chat.py)")
    chat_dataset: str = option("", "fine-tune on a Hugging Face dataset with a `messages` column")
    chat_split: str = option("train", "the split of --chat_dataset")
    demo_conversations: int = option(20000, "conversations generated for --chat_data=demo")
    eval_chat: int = option(0, "at the end, reply to this many held-out conversations and print the exact-match accuracy (0: off)")
    # model
    preset: str = option("modern", "architecture preset", tuple(PRESETS))
    n_layer: int = option(4, "transformer blocks")
    n_head: int = option(4, "attention heads")
    n_embd: int = option(256, "width of the residual stream")
    block_size: int = option(256, "context length in tokens")
    dropout: float = option(0.0, "dropout probability")
    pos_encoding: Optional[str] = option(None, "override the preset's position encoding", (None, "learned", "sinusoidal", "rope"))
    # optimisation
    optimizer: str = option("adamw", "adamw for everything, or muon for the hidden matrices (AdamW for the rest)", ("adamw", "muon"))
    batch_size: int = option(16, "sequences per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    max_iters: int = option(2000, "optimizer steps")
    lr: float = option(1e-3, "peak AdamW learning rate")
    muon_lr: float = option(0.02, "peak Muon learning rate (with --optimizer=muon)")
    weight_decay: float = option(0.1, "decoupled weight decay of the matrices")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the gradient norm to this (0: off)")
    warmup_iters: int = option(100, "steps of linear learning-rate warmup")
    lr_schedule: str = option("cosine", "after warmup: cosine decay, or warmup-stable-decay", ("cosine", "wsd"))
    decay_frac: float = option(0.2, "wsd: the final fraction of steps that decays the learning rate")
    min_lr_frac: float = option(0.1, "the learning rate ends at this fraction of its peak")
    # evaluation, logging, sampling
    eval_interval: int = option(250, "evaluate and checkpoint every this many steps")
    eval_tokens: int = option(65536, "validation tokens scored per evaluation (0: the whole split)")
    log_interval: int = option(10, "print training metrics every this many steps")
    sample_prompt: str = option("", "prompt of the sample printed at the end (empty: start a new document)")
    sample_tokens: int = option(200, "tokens in the final sample (0: none)")
    wandb: bool = option(False, "log metrics to Weights & Biases (WANDB_MODE=offline works without an account)")
    wandb_project: str = option("gptkit", "wandb project")
    wandb_run_name: str = option("", "wandb run name (default: the out_dir name)")
    # system
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "auto: bfloat16 autocast on CUDA, float32 elsewhere", ("auto", "float32", "bfloat16"))
    compile: bool = option(False, "torch.compile the model")
    parallel: str = option("auto", "several processes (under torchrun): auto (ddp when torchrun starts more than one), "
                                   "ddp (DistributedDataParallel) or fsdp (FSDP2, parameters sharded)", ("auto", "ddp", "fsdp"))
    activation_checkpointing: bool = option(False, "recompute each block's activations in the backward pass: less memory, more compute")
    threads: int = option(0, "CPU threads for torch (0: torch's default)")
    seed: int = option(1337, "random seed")
    resume: str = option("auto", "auto: continue from out_dir/last.pt when it exists; true: require it; false: start over, replacing it", ("auto", "true", "false"))
    keep_last: int = option(1, "checkpoints (ckpt_STEP.pt) kept in out_dir; last.pt is the newest")
    max_bad_steps: int = option(5, "stop after this many skipped steps in a row (non-finite loss or gradient, or a loss spike)")
    loss_spike: float = option(0.0, "skip the update of a step whose loss is this many standard deviations above the recent mean (0: off)")


def check_config(cfg):
    for key in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum", "eval_interval", "log_interval", "keep_last", "max_bad_steps"):
        if getattr(cfg, key) <= 0:
            raise UsageError(f"--{key}={getattr(cfg, key)} must be positive")
    if cfg.max_iters < 0 or cfg.warmup_iters < 0:
        raise UsageError("--max_iters and --warmup_iters must not be negative")
    if cfg.loss_spike < 0:
        raise UsageError(f"--loss_spike={cfg.loss_spike} must not be negative (0: off)")
    if not 0 <= cfg.dropout < 1:
        raise UsageError(f"--dropout={cfg.dropout} must be in [0, 1)")
    check_choices(cfg)


class SpikeGuard:
    """Flags a loss far above the recent ones: an exponential moving mean and variance of the accepted steps' losses."""

    def __init__(self, threshold, decay=0.95, warmup=20):
        self.threshold, self.decay, self.warmup = threshold, decay, warmup
        self.mean, self.var, self.count = 0.0, 0.0, 0

    def is_spike(self, loss):
        return bool(self.threshold) and self.count >= self.warmup and loss > self.mean + self.threshold * math.sqrt(self.var)

    def update(self, loss):
        delta = loss - self.mean if self.count else 0.0
        self.mean = self.mean + (1 - self.decay) * delta if self.count else loss
        self.var = self.decay * (self.var + (1 - self.decay) * delta * delta)
        self.count += 1

    def state_dict(self):
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state):
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


class TrainingStopped(Exception):
    """Raised after a SIGTERM or first Ctrl-C, once the step in flight is done and a checkpoint is saved."""

    def __init__(self, signal_name, step):
        super().__init__(signal_name, step)
        self.signal_name, self.step = signal_name, step


class StopSignals:
    """The first SIGINT (Ctrl-C) or SIGTERM asks the loop to stop after the current step; a second SIGINT quits at once."""

    def __init__(self):
        self.requested, self.previous = None, {}

    def __enter__(self):
        try:
            self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: leave signals alone
            self.previous = {}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested} received: finishing this step and saving a checkpoint (Ctrl-C again quits at once)", flush=True)


def prepared_data(cfg, dist=Distributed()):
    """The prepared data folder for this run, preparing the corpus first when needed (rank 0 only; the others wait)."""
    prep = PrepareConfig(inputs=[cfg.data_path] if cfg.data_path else [], dataset=cfg.dataset, text_field=cfg.text_field,
                         tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size, val_fraction=cfg.val_fraction)
    prep.out_dir = cfg.data_dir or str(default_data_dir(prep))
    dist.wait_for(lambda: is_prepared(prep.out_dir))
    if not is_prepared(prep.out_dir):
        print(f"preparing data into {prep.out_dir} (once; later runs reuse it)", flush=True)
        prepare(prep)
    return Path(prep.out_dir)


def model_config(cfg, vocab_size):
    sizes = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                 vocab_size=math.ceil(vocab_size / 64) * 64, dropout=cfg.dropout)  # padded: faster matmuls
    try:
        config = GPTConfig.from_preset(cfg.preset, **sizes)
        if cfg.pos_encoding:
            config = GPTConfig(**{**vars(config), "pos_encoding": cfg.pos_encoding})
    except ValueError as e:
        raise UsageError(str(e)) from None
    return config


@dataclass
class RunData:
    """What the loop trains and evaluates on, for pretraining and fine-tuning alike."""
    tokenizer: Tokenizer
    train_batches: object  # next_batch() -> (x, y); state_dict(); load_state_dict()
    val_batches: object  # () -> an iterator of (x, y), the same batches every call
    summary: str
    held_out: list  # validation conversations (fine-tuning), for --eval_chat


def pretraining_data(cfg, dist=Distributed()):
    data_dir = prepared_data(cfg, dist)
    meta = read_meta(data_dir)
    if meta["tokenizer"] != cfg.tokenizer:
        print(f"note: {data_dir} was prepared with the {meta['tokenizer']} tokenizer, which this run uses (--tokenizer applies when preparing)")
    tokenizer = Tokenizer.from_json((data_dir / TOKENIZER_FILE).read_text())
    val_arrays = load_split(data_dir, "val")
    return RunData(tokenizer, RandomWindows(load_split(data_dir, "train"), cfg.batch_size, cfg.block_size, cfg.seed),
                   lambda: sequential_windows(val_arrays, cfg.batch_size, cfg.block_size, cfg.eval_tokens),
                   f"{data_dir} ({meta['splits']['train']['tokens']:,} train tokens, {meta['tokenizer']} tokenizer, {tokenizer.n_vocab} ids)", [])


def chat_data(cfg, tokenizer):
    """Conversations rendered with the chat template; a random --val_fraction of them is held out."""
    if cfg.chat_dataset:
        conversations, source = dataset_conversations(cfg.chat_dataset, cfg.chat_split), f"dataset {cfg.chat_dataset}"
    elif cfg.chat_data == "demo":
        from data.synthetic_chat import make_conversations
        conversations, source = make_conversations(cfg.demo_conversations, cfg.seed), "synthetic demo conversations"
    else:
        conversations, source = read_conversations(cfg.chat_data), cfg.chat_data
    n_held_out = max(1, round(cfg.val_fraction * len(conversations)))
    if cfg.val_fraction <= 0 or len(conversations) < 2:
        raise UsageError(f"{source}: fine-tuning holds out conversations for validation; use at least 2 and --val_fraction > 0")
    held = set(np.random.default_rng(cfg.seed).permutation(len(conversations))[:n_held_out].tolist())  # random: no pattern of the source
    train_set = [c for i, c in enumerate(conversations) if i not in held]
    seen = {json.dumps(c["messages"]) for c in train_set}
    held_out = [conversations[i] for i in sorted(held) if json.dumps(conversations[i]["messages"]) not in seen]  # never trained on
    train_rows, truncated, dropped = conversation_rows(tokenizer, train_set, cfg.block_size + 1)
    val_rows, _, _ = conversation_rows(tokenizer, held_out, cfg.block_size + 1)
    if truncated or dropped:
        print(f"note: {truncated} conversations were cut to --block_size={cfg.block_size} on a turn boundary and {dropped} dropped "
              f"(not even their first reply fits); raise --block_size to keep them")
    if not val_rows:
        raise UsageError(f"{source}: no held-out conversation (one not also in the training set) fits --block_size={cfg.block_size}; "
                         "raise it or --val_fraction")
    val_rows = val_rows[:max(1, cfg.eval_tokens // cfg.block_size)] if cfg.eval_tokens else val_rows
    pad = tokenizer.eot_id
    return RunData(tokenizer, ConversationBatches(train_rows, cfg.batch_size, cfg.seed, pad),
                   lambda: conversation_batches(val_rows, cfg.batch_size, pad),
                   f"{source} ({len(train_rows):,} conversations to train on, {len(held_out):,} held out)", held_out)


def fine_tune_config(cfg, init):
    """The checkpoint's model, with this run's context length and dropout (positions beyond a learned table cannot exist)."""
    config = GPTConfig.from_dict({**init["model_config"], "block_size": cfg.block_size, "dropout": cfg.dropout})
    trained = init["model_config"]["block_size"]
    if config.pos_encoding == "learned" and cfg.block_size > trained:
        raise UsageError(f"--block_size={cfg.block_size} is longer than the {trained} positions {init['path']} learned; use --block_size={trained} or less")
    if cfg.block_size != trained:
        print(f"note: context length {trained} -> {cfg.block_size} (--block_size)")
    return config


def load_initial_weights(model, init):
    state = dict(init["model"])
    if "transformer.wpe.weight" in state:  # a shorter context keeps the first positions
        state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:model.config.block_size]
    model.load_state_dict(state)


def describe(config):
    return f"{config.n_layer} layers x {config.n_embd} wide, {config.pos_encoding} positions, context {config.block_size}"


def make_optimizers(model, cfg, device):
    """AdamW for everything, or Muon for the 2-D matrices inside the blocks and AdamW for the rest."""
    matrices, others_decay, others_plain = [], [], []
    for name, p in model.named_parameters():
        if p.dim() == 2 and name.startswith("transformer.h."):
            matrices.append(p)
        elif p.dim() == 2:
            others_decay.append(p)
        else:
            others_plain.append(p)  # norms and biases: no decay
    fused = device.startswith("cuda")
    adam_groups = [{"params": others_decay, "weight_decay": cfg.weight_decay}, {"params": others_plain, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        adam_groups[0]["params"] = matrices + others_decay
        optimizers = [torch.optim.AdamW(adam_groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)]
    else:
        optimizers = [torch.optim.Muon(matrices, lr=cfg.muon_lr, weight_decay=cfg.weight_decay),
                      torch.optim.AdamW(adam_groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)]
    for opt in optimizers:
        for group in opt.param_groups:
            group["peak_lr"] = group["lr"]
    return optimizers


def lr_multiplier(step, cfg):
    """Linear warmup, then cosine or warmup-stable-decay down to min_lr_frac."""
    if step < cfg.warmup_iters:
        return (step + 1) / cfg.warmup_iters
    if cfg.lr_schedule == "cosine":
        progress = (step - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters)
        return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    decay_start = cfg.max_iters * (1 - cfg.decay_frac)
    if step < decay_start:
        return 1.0
    progress = (step - decay_start) / max(1, cfg.max_iters - decay_start)
    return 1.0 - (1 - cfg.min_lr_frac) * min(1.0, progress)


@torch.no_grad()
def evaluate(model, batches, byte_lengths, device, autocast, dist=Distributed()):
    """Mean loss in nats per target token, and bits per byte over the text tokens (special tokens carry no bytes).

    Targets of -1 (fine-tuning: not the assistant's tokens, or padding) are not scored.
    """
    model.eval()
    nats = tokens = text_nats = text_bytes = 0.0
    for x, y in batches:
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        with autocast:
            losses = model(x, y, reduction="none").view(y.shape)
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


def peak_flops(device):
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def format_seconds(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class MetricsLog:
    """Metrics to metrics.jsonl in the output folder, and to wandb when asked."""

    def __init__(self, cfg, fresh, enabled=True):
        self.path, self.enabled = Path(cfg.out_dir) / "metrics.jsonl", enabled
        if fresh and enabled:
            self.path.unlink(missing_ok=True)
        self.wandb = None
        if cfg.wandb and enabled:
            try:
                import wandb
            except ImportError:
                raise UsageError("--wandb=true needs the wandb package: pip install wandb") from None
            self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name or Path(cfg.out_dir).name, config=asdict(cfg))

    def write(self, record):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb:
            self.wandb.log({k: v for k, v in record.items() if k != "iter"}, step=record["iter"])

    def close(self):
        if self.wandb:
            self.wandb.finish()


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), position, has_gauss, gauss], "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng_state(state):
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def train(cfg):
    """Train alone, or as one rank of a torchrun job (see distributed.py); the process group lives as long as the run."""
    check_config(cfg)
    dist, device = Distributed.setup(cfg, pick_device(cfg.device))
    try:
        model = run_training(cfg, dist, device)
        dist.barrier()  # leave together: a rank tearing down gloo while another still talks to it can make that one abort
        return model
    finally:
        dist.close()


def run_training(cfg, dist, device):
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    use_bf16, autocast = autocast_for(cfg.dtype, device)

    init = load_any_checkpoint(cfg.init_from) if cfg.init_from else None
    fine_tuning = bool(cfg.chat_data or cfg.chat_dataset)
    if fine_tuning:
        if init is None:
            raise UsageError("fine-tuning on conversations needs --init_from=CHECKPOINT, the model to fine-tune (e.g. --init_from=out after `python train.py`)")
        data = chat_data(cfg, Tokenizer.from_json(init["tokenizer"]))
    else:
        data = pretraining_data(cfg, dist)
        if init is not None and init["tokenizer"] != data.tokenizer.to_json():
            raise UsageError(f"{init['path']} was trained with a different tokenizer than {data.summary.split(' ')[0]}'s; "
                             "prepare the data with the checkpoint's tokenizer, or train from scratch")
    tokenizer = data.tokenizer
    byte_lengths = torch.tensor(tokenizer.token_byte_lengths(), device=device)

    config = fine_tune_config(cfg, init) if init else model_config(cfg, tokenizer.n_vocab)
    model = GPT(config).to(device)
    if init:
        load_initial_weights(model, init)
    flops_per_token, n_params = model.flops_per_token(), model.num_params()
    if cfg.activation_checkpointing:
        checkpoint_activations(model)
    dist.shard(model)  # FSDP: in place, before the optimizer sees the parameters
    optimizers = make_optimizers(model, cfg, device)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    step, best_val_loss, tokens_seen, skipped_steps = 0, float("inf"), 0, 0
    best = {}  # this process's best evaluation (step, val_loss, val_bpb), for the model card
    spikes = SpikeGuard(cfg.loss_spike)
    resumed = cfg.resume == "true" or (cfg.resume == "auto" and (out_dir / LAST).is_file())
    if resumed:
        step, best_val_loss, tokens_seen, skipped_steps = resume(out_dir / LAST, model, optimizers, data.train_batches, spikes, config, tokenizer, dist)
    train_batches = dist.train_batches(data.train_batches)  # this rank's micro-batches of each global batch
    train_model, eval_model = dist.wrap(model, cfg.compile)
    log = MetricsLog(cfg, fresh=not resumed, enabled=dist.is_main)

    peak = peak_flops(device)
    chat_tuned = fine_tuning or bool(init and init.get("chat_tuned"))
    print(f"data: {data.summary}")
    print(f"model: {describe(config)}, {n_params / 1e6:.2f}M parameters{f', from {init_path}' if (init_path := init and init['path']) else ''}")
    print(f"{'fine-tuning' if fine_tuning else 'training'} on {device}{' (bf16)' if use_bf16 else ''}: {cfg.max_iters} steps of "
          f"{cfg.batch_size * cfg.grad_accum} {'conversations' if fine_tuning else f'x {cfg.block_size} tokens'}, {cfg.optimizer}"
          f"{f', {dist.mode} over {dist.world_size} processes' if dist.active else ''}")

    def saved_model(weights):
        """What save_checkpoint writes: the model itself when alone, else its full weights gathered on rank 0."""
        return model if not dist.active else FullModel(config, weights)

    def save_last():
        weights, optimizer_states = dist.full_state(model, optimizers) if dist.active else (None, [o.state_dict() for o in optimizers])
        if dist.is_main:
            save_rotating(out_dir, cfg.keep_last, saved_model(weights), tokenizer, train_config=asdict(cfg), step=step, best_val_loss=best_val_loss,
                          tokens_seen=tokens_seen, skipped_steps=skipped_steps, optimizers=optimizer_states,
                          loader=data.train_batches.state_dict(), spikes=spikes.state_dict(), rng=rng_state(), chat_tuned=chat_tuned)

    def save_best(metrics):
        weights = dist.full_weights(model) if dist.active else None
        if dist.is_main:
            save_checkpoint(out_dir / BEST, saved_model(weights), tokenizer, train_config=asdict(cfg), step=step, chat_tuned=chat_tuned, **metrics)

    def write_card(latest):
        if not dist.is_main:
            return
        write_model_card(out_dir, model_config=vars(config), train_config=asdict(cfg), n_params=n_params, step=step,
                         tokens_seen=tokens_seen, tokenizer_kind=tokenizer.kind, n_vocab=tokenizer.n_vocab, latest=latest,
                         best=best or {"val_loss": best_val_loss}, chat_tuned=chat_tuned)

    started = last_log = time.time()
    start_step = window_start_step = step
    window_tokens = bad_in_a_row = 0
    with StopSignals() as stop:
        while True:
            if step % cfg.eval_interval == 0 or step == cfg.max_iters:
                metrics = evaluate(eval_model, dist.eval_batches(data.val_batches()), byte_lengths, device, autocast, dist)
                improved = metrics["val_loss"] < best_val_loss
                best_val_loss = min(best_val_loss, metrics["val_loss"])
                print(f"step {step}: val loss {metrics['val_loss']:.4f} nats/token, {metrics['val_bpb']:.4f} bits/byte{' (best)' if improved else ''}", flush=True)
                log.write({"iter": step, "tokens": tokens_seen, "elapsed_s": time.time() - started, **metrics})
                if step > start_step:  # not the state just loaded (or the untrained one)
                    save_last()
                    if improved:
                        save_best(metrics)
                        best = {"step": step, **metrics}
                    write_card(metrics)
                last_log, window_start_step, window_tokens = time.time(), step, 0  # keep evaluation time out of the throughput figure
            if step == cfg.max_iters:
                break

            loss, grad_norm, step_tokens, updated = train_step(train_model, model, optimizers, train_batches, cfg, step, device, autocast, spikes, dist)
            step += 1
            tokens_seen += step_tokens
            window_tokens += step_tokens
            if updated:
                bad_in_a_row = 0
            else:
                skipped_steps += 1
                bad_in_a_row += 1
                why = (f"a loss spike ({loss:.4f}, recent mean {spikes.mean:.4f})" if math.isfinite(loss) and math.isfinite(grad_norm)
                       else f"a non-finite loss ({loss:.4g}) or gradient norm ({grad_norm:.4g})")
                print(f"step {step}: {why}; update skipped ({skipped_steps} so far)", flush=True)
                if bad_in_a_row >= cfg.max_bad_steps:
                    raise UsageError(f"training diverged: {bad_in_a_row} steps in a row were skipped ({why}); "
                                     f"the last good checkpoint is {out_dir / LAST}; lower --lr or raise --warmup_iters")

            if step % cfg.log_interval == 0 or step == cfg.max_iters:
                now = time.time()
                tokens_per_s = window_tokens / (now - last_log)
                eta = (cfg.max_iters - step) * (now - last_log) / (step - window_start_step)
                record = {"iter": step, "tokens": tokens_seen, "loss": loss, "lr": optimizers[-1].param_groups[0]["lr"],
                          "tokens_per_s": tokens_per_s, "skipped_steps": skipped_steps}
                mfu = ""
                if peak:
                    record["mfu"] = flops_per_token * tokens_per_s / (peak * dist.world_size)  # tokens of all ranks, over all GPUs
                    mfu = f" | mfu {100 * record['mfu']:.1f}%"
                print(f"step {step}/{cfg.max_iters} ({100 * step / cfg.max_iters:.0f}%) | loss {loss:.4f} | lr {record['lr']:.2e} | "
                      f"{tokens_per_s:,.0f} tok/s{mfu} | eta {format_seconds(eta)}", flush=True)
                log.write(record)
                last_log, window_start_step, window_tokens = now, step, 0
            if dist.any(stop.requested):  # every rank stops at the same step
                save_last()
                write_card(None)  # no evaluation at this step
                log.close()
                dist.barrier()  # no rank exits while rank 0 is still saving
                raise TrainingStopped(stop.requested or "SIGTERM", step)

    log.close()
    dist.barrier()  # rank 0's last checkpoint is written before any rank leaves
    print(f"done in {format_seconds(time.time() - started)}; best val loss {best_val_loss:.4f}; checkpoints in {out_dir}/")
    if dist.mode == "fsdp":  # generation below runs on rank 0 alone: a plain model with the gathered weights
        weights = dist.full_weights(model)
        model = GPT(config).to(device) if dist.is_main else None
        if model is not None:
            model.load_state_dict(weights)
    if not dist.is_main:
        return None
    plot_curves(out_dir)
    if fine_tuning and cfg.eval_chat:
        print_chat_accuracy(model, tokenizer, data.held_out[:cfg.eval_chat])
    elif cfg.sample_tokens:
        print_sample(model, tokenizer, cfg)
    return model


class FullModel:
    """What save_checkpoint needs of a model (config and state_dict), from weights gathered across the ranks."""

    def __init__(self, config, weights):
        self.config, self.weights = config, weights

    def state_dict(self):
        return self.weights


def train_step(train_model, model, optimizers, batches, cfg, step, device, autocast, spikes, dist=Distributed()):
    """One optimizer step over grad_accum micro-batches; returns (loss, gradient norm, input tokens, whether it updated).

    With W processes each runs grad_accum / W of the micro-batches, gradients are averaged across them on the last one,
    and the loss and token count returned are the global ones, the same on every rank.
    A step whose loss or gradient is not finite, or whose loss is a spike, changes no weight and no optimizer state.
    """
    multiplier = lr_multiplier(step, cfg)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] * multiplier
    loss_sum, tokens = 0.0, 0
    micro_steps = cfg.grad_accum // dist.world_size
    for i in range(micro_steps):
        x, y = (torch.from_numpy(a).to(device, non_blocking=True) for a in batches.next_batch())
        tokens += x.numel()
        with dist.grad_sync(train_model, i == micro_steps - 1):
            with autocast:
                loss = train_model(x, y) / micro_steps
            loss.backward()
        loss_sum += loss.item()
    if dist.active:
        loss_sum, tokens = dist.sum(loss_sum, tokens)
        loss_sum, tokens = loss_sum / dist.world_size, int(tokens)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    grad_norm = dist.full_value(grad_norm).item()
    update = math.isfinite(loss_sum) and math.isfinite(grad_norm) and not spikes.is_spike(loss_sum)
    if update:
        for opt in optimizers:
            opt.step()
        spikes.update(loss_sum)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return loss_sum, grad_norm, tokens, update


def resume(path, model, optimizers, train_batches, spikes, config, tokenizer, dist=Distributed()):
    ckpt = load_checkpoint(path)
    if ckpt["model_config"] != vars(config):
        changed = sorted(k for k in vars(config) if ckpt["model_config"].get(k) != vars(config)[k])
        raise UsageError(f"{path} was trained with a different model ({', '.join(changed)} differ); use the same settings or a new --out_dir")
    if ckpt["tokenizer"] != tokenizer.to_json():
        raise UsageError(f"{path} was trained with a different tokenizer than the data's; use the data it was trained on or a new --out_dir")
    dist.load_state(model, optimizers, ckpt["model"], ckpt["optimizers"])  # every rank reads the file: a filesystem they share
    train_batches.load_state_dict(ckpt["loader"])
    if "spikes" in ckpt:
        spikes.load_state_dict(ckpt["spikes"])
    restore_rng_state(ckpt["rng"])
    print(f"resuming from {path} at step {ckpt['step']} (--resume=false starts over)")
    return ckpt["step"], ckpt["best_val_loss"], ckpt["tokens_seen"], ckpt.get("skipped_steps", 0)


def print_sample(model, tokenizer, cfg):
    prompt = tokenizer.encode(cfg.sample_prompt) if cfg.sample_prompt else [tokenizer.eot_id]
    stream = TextStream(tokenizer)
    print("-" * 20, "sample", "-" * 20)
    print(cfg.sample_prompt, end="")
    for token in generate(model, prompt, cfg.sample_tokens, temperature=0.8, top_k=50, seed=cfg.seed,
                          stop_ids={tokenizer.eot_id}, vocab_limit=tokenizer.n_vocab):
        print(stream.feed(token), end="", flush=True)
    print(stream.flush())
    print("-" * 48)


def plot_curves(out_dir):
    """out_dir/curves.png from metrics.jsonl, when the optional matplotlib is installed."""
    try:
        from plot import plot_runs
        plot_runs([out_dir], out_dir / "curves.png")
        print(f"training curves: {out_dir / 'curves.png'}")
    except ImportError:
        pass  # matplotlib is an optional extra: pip install -e ".[plot]"
    except UsageError as e:
        print(f"note: no training curves ({e})")


def print_chat_accuracy(model, tokenizer, conversations):
    """Reply to held-out conversations through the REPL's own ChatSession and print the exact-match accuracy."""
    counts, examples = reply_accuracy(model.eval(), tokenizer, conversations)
    if "all" not in counts:
        return
    kinds = ", ".join(f"{kind} {100 * right / total:.0f}% ({right}/{total})" for kind, (right, total) in counts.items() if kind != "all")
    right, total = counts["all"]
    print(f"chat accuracy on {total} held-out conversations: {100 * right / total:.1f}% ({right}/{total}){f'; {kinds}' if kinds else ''}")
    for question, expected, got in examples[:4]:
        print(f"  user: {question!r}  expected: {expected!r}  got: {got!r}")


def main():
    cfg = parse_options(TrainConfig, description=__doc__, default_config="default")
    try:
        train(cfg)
    except TrainingStopped as stopped:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"stopped by {stopped.signal_name} at step {stopped.step}; the checkpoint is in {cfg.out_dir}/. "
                  f"Run the same command again to resume.", file=sys.stderr)
        leave(128 + signal.Signals[stopped.signal_name].value)
    leave(0)


def leave(code):
    """Exit with `code`. A torchrun worker skips the interpreter's teardown, where gloo's threads, still joinable after
    destroy_process_group, occasionally abort the process ("terminate called without an active exception")."""
    if launched_world_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run_cli(main)
