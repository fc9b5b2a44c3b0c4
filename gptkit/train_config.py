"""train.py's options (TrainConfig), their checks, and the model configuration they describe."""
import math
from dataclasses import dataclass
from typing import Optional

from gptkit.errors import UsageError
from gptkit.files import check_output
from gptkit.model import PRESETS, GPTConfig
from gptkit.options import check_values, option
from gptkit.tokenizer import TOKENIZER_KINDS


@dataclass
class TrainConfig:
    out_dir: str = option("out", "folder for checkpoints (last.pt, best.pt) and metrics.jsonl")
    # data
    data_dir: str = option("", "a folder prepared by data/prepare.py; empty: prepare the source below into prepared/")
    data_path: str = option("", "a text file, folder or glob to train on (empty, with no --dataset: the built-in corpus)")
    dataset: str = option("", "a Hugging Face dataset name to train on, read through `datasets`")
    text_field: str = option("text", "the text field of .jsonl files and datasets")
    tokenizer: str = option("bpe", "tokenizer used when preparing data", TOKENIZER_KINDS)
    vocab_size: int = option(4096, "vocabulary size of a trained bpe tokenizer", bounds="[1, 16777216]")
    val_fraction: float = option(0.01, "share held out for validation: of the documents when preparing (by a hash of each one's path; raised "
                                 "to expect 32 when the files can be counted: data/prepare.py --help), of the conversations or prompts "
                                 "when fine-tuning", bounds="[0, 1)")
    # fine-tuning
    init_from: str = option("", "start from this checkpoint (file, or folder with best.pt/last.pt), a Hugging Face GPT-2 folder, "
                                "or a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl): its model, weights and tokenizer")
    chat_data: str = option("", "fine-tune on conversations: a .jsonl file with one {\"messages\": [...]} per line, or `demo` "
                                "(gptkit/demo_chat.py's synthetic ones)")
    chat_dataset: str = option("", "fine-tune on a Hugging Face dataset with a `messages` column")
    chat_split: str = option("train", "the split of --chat_dataset")
    demo_conversations: int = option(20000, "conversations generated for --chat_data=demo", bounds="[2, 100000000]")
    eval_chat: int = option(0, "at the end, reply to this many held-out conversations and print the exact-match accuracy (0: off)", bounds="[0, 1000000]")
    # alignment from feedback (docs/alignment.md)
    objective: str = option("auto", "what to optimise; auto: chat_sft with --chat_data/--chat_dataset, else next_token. reward: a "
                                    "reward model on --pairs; dpo: the policy on --pairs; ppo: the policy against --reward_model on "
                                    "--prompts; grpo: the policy against --reward_fn or --reward_model on --prompts",
                             ("auto", "next_token", "chat_sft", "reward", "dpo", "ppo", "grpo"))
    pairs: str = option("", "reward/dpo: preference pairs, a .jsonl file (TRL's prompt/chosen/rejected or Anthropic HH's chosen/rejected)")
    pairs_dataset: str = option("", "reward/dpo: preference pairs from a Hugging Face dataset (the same columns)")
    prompts: str = option("", "ppo/grpo: prompts, a .jsonl file of {\"prompt\": [messages] or text, ...fields for the reward function}")
    ref_from: str = option("", "dpo/ppo/grpo: the frozen reference model (default: --init_from)")
    reward_model: str = option("", "ppo (and grpo): a reward model checkpoint (from --objective=reward) that scores replies")
    reward_fn: str = option("", "grpo: a Python reward, module:function called as function(reply_text, row) -> float (row: the prompt's JSONL fields)")
    beta: float = option(0.1, "dpo: strength of the pull towards the reference (higher: closer)", bounds=">0")
    dpo_loss: str = option("sigmoid", "dpo: the loss on implicit reward margins: sigmoid (DPO) or ipo (IPO)", ("sigmoid", "ipo"))
    group_size: int = option(8, "grpo: replies sampled per prompt, compared with each other (at least 2)", bounds="[1, 4096]")
    rollout_temperature: float = option(1.0, "ppo/grpo: sampling temperature of the rollouts", bounds=">0")
    max_reply_tokens: int = option(48, "ppo/grpo: longest sampled reply, in tokens", bounds="[1, 1048576]")
    no_end_penalty: float = option(1.0, "ppo/grpo: subtracted from the reward of a reply that never ends", bounds=">=0")
    kl_coef: float = option(0.05, "ppo/grpo: weight of the per-token KL penalty to the reference (grpo: 0 turns it off)", bounds=">=0")
    target_kl: float = option(0.0, "ppo: adapt kl_coef to keep the KL to the reference near this, in nats per reply (0: fixed kl_coef)", bounds=">=0")
    ppo_epochs: int = option(2, "ppo/grpo: optimizer steps on each batch of rollouts", bounds="[1, 1000]")
    clip: float = option(0.2, "ppo/grpo: clip range of the probability ratio (and of the critic's values)", bounds="(0, 10]")
    gae_lambda: float = option(0.95, "ppo: GAE's lambda (the discount is 1: a reply is short)", bounds="[0, 1]")
    critic_lr: float = option(1e-4, "ppo: AdamW learning rate of the critic", bounds="[0, 1e6]")
    critic_warmup: int = option(0, "ppo: rollouts on which only the critic learns, before the policy moves", bounds="[0, 1000000000]")
    eval_prompts: int = option(64, "ppo/grpo: held-out prompts replied to (greedily) at each evaluation", bounds="[1, 1000000]")
    # model
    preset: str = option("modern", "architecture preset", tuple(PRESETS))
    n_layer: int = option(4, "transformer blocks", bounds="[1, 1024]")
    n_head: int = option(4, "attention heads", bounds="[1, 1024]")
    n_embd: int = option(256, "width of the residual stream", bounds="[1, 65536]")
    block_size: int = option(256, "context length in tokens", bounds="[1, 1048576]")
    dropout: float = option(0.0, "dropout probability", bounds="[0, 1)")
    pos_encoding: Optional[str] = option(None, "override the preset's position encoding", (None, "learned", "sinusoidal", "rope"))
    window: int = option(0, "sparse attention: the keys a local layer's query sees, itself included (0: dense, or 256 with --attn_pattern=auto "
                            "where the preset goes local)", bounds="[0, 1048576]")
    attn_pattern: str = option("auto", "sparse attention: L (local, banded to --window) and G (global) read cyclically over the layers, "
                                       "e.g. LG as GPT-3 or LLLLLG as Gemma 3; the last layer stays global unless the pattern names every "
                                       "layer. Empty: dense. auto: LLLG for --preset=modern at contexts of 2,048 tokens and more, or "
                                       "whenever --window is given; dense otherwise")
    # optimisation
    optimizer: str = option("adamw", "adamw for everything, or muon for the hidden matrices (AdamW for the rest)", ("adamw", "muon"))
    batch_size: int = option(16, "sequences per micro-batch", bounds="[1, 1048576]")
    grad_accum: int = option(1, "micro-batches per optimizer step (the global batch is batch_size x grad_accum sequences, however "
                                "many processes share it)", bounds="[1, 1048576]")
    batch_tokens: int = option(0, "the global batch in tokens per step, instead of --grad_accum: grad_accum becomes "
                                  "batch_tokens / (batch_size x block_size) (0: off)", bounds="[0, 1099511627776]")
    max_iters: int = option(2000, "optimizer steps", bounds="[0, 1000000000]")
    lr: float = option(1e-3, "peak AdamW learning rate", bounds="[0, 1e6]")
    muon_lr: float = option(0.02, "peak Muon learning rate (with --optimizer=muon)", bounds="[0, 1e6]")
    weight_decay: float = option(0.1, "decoupled weight decay of the matrices", bounds=">=0")
    beta1: float = option(0.9, "AdamW beta1", bounds="[0, 1)")
    beta2: float = option(0.95, "AdamW beta2", bounds="[0, 1)")
    grad_clip: float = option(1.0, "clip the gradient norm to this (0: off)", bounds=">=0")
    warmup_iters: int = option(100, "steps of linear learning-rate warmup", bounds="[0, 1000000000]")
    lr_schedule: str = option("cosine", "after warmup: cosine decay, or warmup-stable-decay", ("cosine", "wsd"))
    decay_frac: float = option(0.2, "wsd: the final fraction of steps that decays the learning rate", bounds="[0, 1]")
    min_lr_frac: float = option(0.1, "the learning rate ends at this fraction of its peak", bounds="[0, 1]")
    # evaluation, logging, sampling
    eval_interval: int = option(250, "evaluate and checkpoint every this many steps", bounds="[1, 1000000000]")
    eval_tokens: int = option(65536, "validation tokens scored per evaluation (0: the whole split)", bounds=">=0")
    log_interval: int = option(10, "print training metrics every this many steps", bounds="[1, 1000000000]")
    sample_prompt: str = option("", "prompt of the sample printed at the end (empty: start a new document)")
    sample_tokens: int = option(200, "tokens in the final sample (0: none)", bounds="[0, 1000000]")
    wandb: bool = option(False, "log metrics to Weights & Biases (WANDB_MODE=offline works without an account)")
    wandb_project: str = option("gptkit", "wandb project")
    wandb_run_name: str = option("", "wandb run name (default: the out_dir name)")
    # system
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "auto: bfloat16 autocast on CUDA, float32 elsewhere", ("auto", "float32", "bfloat16"))
    compile: bool = option(False, "torch.compile the model")
    parallel: str = option("auto", "several processes (under torchrun): auto (ddp when torchrun starts more than one), "
                                   "ddp (DistributedDataParallel) or fsdp (FSDP2, parameters sharded)", ("auto", "ddp", "fsdp"))
    tp: int = option(1, "tensor parallel: split each copy of the model across this many processes (of one node, under torchrun); "
                            "the rest are data parallel (--parallel)", bounds="[1, 4096]")
    pp: int = option(1, "pipeline parallel: split each copy of the model's blocks into this many stages on as many processes "
                            "(under torchrun; e.g. one per node), fed the step's micro-batches (--grad_accum)", bounds="[1, 4096]")
    pp_schedule: str = option("1f1b", "pipeline schedule: gpipe (all forwards, then all backwards), 1f1b (one forward, one backward: "
                                      "less memory; needs --pp micro-batches per step) or interleaved_1f1b (two stages per process)",
                              ("gpipe", "1f1b", "interleaved_1f1b"))
    activation_checkpointing: bool = option(False, "recompute each block's activations in the backward pass: less memory, more compute")
    threads: int = option(0, "CPU threads for torch (0: torch's default)", bounds="[0, 4096]")
    seed: int = option(1337, "random seed", bounds="[0, 4294967295]")
    resume: str = option("auto", "auto: continue from out_dir/last.pt when it exists; true: require it; false: start over, replacing it",
                         ("auto", "true", "false"))
    keep_last: int = option(1, "checkpoints (ckpt_STEP.pt) kept in out_dir; last.pt is the newest", bounds="[1, 1000000]")
    checkpoint_format: str = option("auto", "checkpoints during the run: single (one file, gathered on rank 0), sharded (each process "
                                            "writes its shares: torch.distributed.checkpoint, in out_dir/sharded/) or auto (sharded when "
                                            "the model is split: fsdp, --tp, --pp); the end always writes the single file too",
                                    ("auto", "single", "sharded"))
    max_bad_steps: int = option(5, "stop after this many skipped steps in a row (non-finite loss or gradient, or a loss spike)", bounds="[1, 1000000]")
    loss_spike: float = option(0.0, "skip the update of a step whose loss is this many standard deviations above the recent mean (0: off)", bounds=">=0")


def check_config(cfg):
    """Each option's choices and bounds (declared beside it above), then the rules that tie options together."""
    check_values(cfg)
    check_output(cfg.out_dir, "out_dir", folder=True)
    if cfg.batch_tokens:
        cfg.grad_accum = accumulation_for(cfg.batch_tokens, cfg.batch_size, cfg.block_size)
    split = " ".join(f"--{name}={ways}" for name, ways in (("pp", cfg.pp), ("tp", cfg.tp)) if ways > 1)
    if split and cfg.objective not in ("auto", "next_token", "chat_sft"):
        raise UsageError(f"{split} trains with --objective next_token or chat_sft; --objective={cfg.objective} scores whole "
                         "vocabularies or samples replies on every process: use --parallel=ddp or fsdp without --tp or --pp")


def accumulation_for(batch_tokens, batch_size, block_size):
    """The micro-batches of batch_size x block_size tokens that make a global batch of batch_tokens."""
    micro = batch_size * block_size
    if batch_tokens % micro:
        lower, higher = max(1, batch_tokens // micro) * micro, (batch_tokens // micro + 1) * micro
        raise UsageError(f"--batch_tokens={batch_tokens:,} is not a whole number of micro-batches of --batch_size={batch_size} x "
                         f"--block_size={block_size} = {micro:,} tokens; use --batch_tokens={lower} or {higher}")
    return batch_tokens // micro


AUTO_PATTERN, AUTO_WINDOW, AUTO_FROM_CONTEXT = "LLLG", 256, 2048  # bench/sparse_attention.py's measurements, docs/performance.md


def attention_layout(cfg):
    """(attn_pattern, window) of a new model: as given, or what --attn_pattern=auto stands for.

    Measured on this project's CPU (4 x 256 modern model): LLLG with a window of 256 trains 1.17x as fast as dense at
    2,048 tokens and 1.36x at 4,096, no faster at 1,024, with validation loss as good or better at 1,024; a local
    layer's KV cache stops growing past its window. So modern goes local from 2,048 tokens.
    """
    if cfg.attn_pattern != "auto":
        return cfg.attn_pattern, cfg.window
    if cfg.n_layer > 1 and (cfg.window or (cfg.preset == "modern" and cfg.block_size >= AUTO_FROM_CONTEXT)):
        return AUTO_PATTERN[-cfg.n_layer:], cfg.window or AUTO_WINDOW  # fewer layers: LLG, LG, the last one global
    return "", 0


def model_config(cfg, vocab_size):
    attn_pattern, window = attention_layout(cfg)
    sizes = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                 vocab_size=math.ceil(vocab_size / 64) * 64, dropout=cfg.dropout,  # padded: faster matmuls
                 window=window, attn_pattern=attn_pattern)
    try:
        config = GPTConfig.from_preset(cfg.preset, **sizes)
        if cfg.pos_encoding:
            config = GPTConfig(**{**vars(config), "pos_encoding": cfg.pos_encoding})
    except ValueError as e:
        raise UsageError(str(e)) from None
    return config


def fine_tune_config(cfg, init):
    """The checkpoint's model, with this run's context length and dropout (positions beyond a learned table cannot exist)."""
    config = GPTConfig.from_dict({**init["model_config"], "block_size": cfg.block_size, "dropout": cfg.dropout})
    trained = init["model_config"]["block_size"]
    if config.pos_encoding == "learned" and cfg.block_size > trained:
        raise UsageError(f"--block_size={cfg.block_size} is longer than the {trained} positions {init['path']} learned; use --block_size={trained} or less")
    if cfg.block_size != trained:
        print(f"note: context length {trained} -> {cfg.block_size} (--block_size)")
    return config


def describe(config):
    local = f", attention {config.attn_pattern} with a window of {config.window}" if config.has_local_layers() else ""
    return f"{config.n_layer} layers x {config.n_embd} wide, {config.pos_encoding} positions, context {config.block_size}{local}"

