"""Write MODEL_CARD.md, a short human-readable summary of a checkpoint folder: python -m gptkit.model_card --ckpt=out

train.py writes it after every checkpoint through write_model_card(); this script writes it again from a checkpoint
(last.pt for the training state, best.pt for the best validation figures, metrics.jsonl for the latest ones).
"""
import math
import shlex
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from gptkit.errors import UsageError, run_cli
from gptkit.files import atomic_write
from gptkit.model import GPT2_SIZES, PRESETS
from gptkit.options import format_value, option, parse_options

CARD_FILE = "MODEL_CARD.md"
FEATURES = {  # how each architecture choice reads in the card
    "norm": {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm"},
    "mlp": {"gelu": "GELU MLP", "relu2": "ReLU² MLP"},
}


@dataclass
class CardConfig:
    ckpt: str = option("out", "the folder train.py wrote (its --out_dir), or a checkpoint file; the card is written beside it")


def write_model_card(out_dir, *, model_config, train_config, n_params, step, tokens_seen, tokenizer_kind, n_vocab,
                     latest=None, best=None, chat_tuned=False, date=None):
    """Write out_dir/MODEL_CARD.md atomically from plain values; returns its path.

    model_config, train_config: the dicts a checkpoint stores (train_config may be None: not recorded).
    latest: {"val_loss", "val_bpb"} of the evaluation at `step`; best: {"val_loss", "val_bpb", "step"} of the best
    one. Either may be None, and any of their keys missing. date: when the checkpoint was saved (default: now).
    """
    path = Path(out_dir) / CARD_FILE
    text = model_card(Path(out_dir), model_config, train_config, n_params, step, tokens_seen, tokenizer_kind, n_vocab,
                      latest, best, chat_tuned, date or datetime.now())
    with atomic_write(path, "w") as f:
        f.write(text)
    return path


def model_card(out_dir, model_config, train_config, n_params, step, tokens_seen, tokenizer_kind, n_vocab, latest, best, chat_tuned, date):
    """The card's Markdown text."""
    c, tc = model_config, train_config or {}
    name = out_dir.resolve().name
    tokens = f" on {tokens_seen:,} tokens" if tokens_seen is not None else ""
    chat = "Fine-tuned for chat" if chat_tuned else "Not fine-tuned for chat"
    lines = [
        f"# {name}", "",
        f"A {n_params / 1e6:.2f}M-parameter GPT ({architecture(c)}) trained for {step:,} steps{tokens}. {chat}.", "",
        f"Checkpoint saved {date:%Y-%m-%d %H:%M}; this card is rewritten by train.py after every checkpoint "
        f"and by `python -m gptkit.model_card --ckpt={out_dir}`.", "",
        "## Model", "",
        "| | |", "| --- | --- |",
        f"| architecture | {architecture(c)}: {features(c)} |",
        f"| layers | {c['n_layer']} |",
        f"| heads | {c['n_head']} of {c['n_embd'] // c['n_head']} channels |",
        f"| width | {c['n_embd']} |",
        f"| context | {c['block_size']:,} tokens |",
        f"| parameters | {n_params:,} ({n_params / 1e6:.2f}M) |",
        f"| tokenizer | {tokenizer_kind}, {n_vocab:,} ids (embedding table of {c['vocab_size']:,} rows) |",
        "", "## Training", "",
    ]
    if train_config:
        unit = BATCH_UNITS.get(tc.get("objective"), "conversations" if fine_tuned_on_conversations(tc) else f"x {tc['block_size']} tokens")
        lines += [
            "| | |", "| --- | --- |",
            f"| data | {data_source(tc)} |",
            f"| steps | {step:,} of {tc['max_iters']:,} |",
            f"| tokens processed | {f'{tokens_seen:,}' if tokens_seen is not None else 'not recorded'} |",
            f"| batch | {tc['batch_size']} {unit} per micro-batch, {tc['grad_accum']} micro-batch{'es' * (tc['grad_accum'] != 1)} per step |",
            f"| optimizer | {optimizer(tc)} |",
            f"| fine-tuned for chat | {'yes' if chat_tuned else 'no'} |",
        ]
    else:
        lines.append(f"The checkpoint records no training configuration (step {step:,}). {chat}.")
    lines += ["", "## Validation", "", *validation_table(latest, best, step, tc.get("objective")), "", "## Use it", "", "```bash",
              *(reward_model_usage(out_dir) if c.get("score_head") else usage(out_dir, tc, chat_tuned)), "```", ""]
    return "\n".join(lines)


def architecture(c):
    """The preset the model config matches ("modern preset", "gpt2 preset with rope positions"), else "custom"."""
    for name, preset in PRESETS.items():
        differ = [k for k in preset if c.get(k) != preset[k]]
        if not differ or differ == ["pos_encoding"]:
            size = next((size for size, dims in GPT2_SIZES.items() if dims == (c["n_layer"], c["n_head"], c["n_embd"])), None)
            sized = f", the size of {size}" if name == "gpt2" and size else ""
            return f"{name} preset{f' with {c[differ[0]]} positions' if differ else ''}{sized}"
    return "custom architecture"


def features(c):
    return ", ".join([
        f"{c['pos_encoding']} positions", FEATURES["norm"].get(c["norm"], c["norm"]), FEATURES["mlp"].get(c["mlp"], c["mlp"]),
        *(["QK-norm"] if c.get("qk_norm") else []), "tied embeddings" if c.get("tie_embeddings") else "untied embeddings",
        "biases" if c.get("bias") else "no biases",
    ])


def fine_tuned_on_conversations(tc):
    return tc.get("chat_data") or tc.get("chat_dataset")


BATCH_UNITS = {"reward": "preference pairs", "dpo": "preference pairs", "ppo": "sampled replies", "grpo": "sampled replies"}


def data_source(tc):
    if tc.get("objective") in ("reward", "dpo"):
        pairs = f"the Hugging Face dataset {tc['pairs_dataset']}" if tc.get("pairs_dataset") else tc.get("pairs")
        source = f"preference pairs from {pairs} ({'a reward model' if tc['objective'] == 'reward' else 'DPO'})"
    elif tc.get("objective") in ("ppo", "grpo"):
        scorer = tc.get("reward_fn") or f"the reward model {tc.get('reward_model')}"
        source = f"replies sampled to the prompts of {tc.get('prompts')}, rewarded by {scorer} ({tc['objective'].upper()})"
    elif tc.get("chat_dataset"):
        source = f"conversations of the Hugging Face dataset {tc['chat_dataset']} ({tc.get('chat_split', 'train')} split)"
    elif tc.get("chat_data") == "demo":
        source = f"{tc.get('demo_conversations', 0):,} synthetic conversations (gptkit/demo_chat.py)"
    elif tc.get("chat_data"):
        source = f"conversations from {tc['chat_data']}"
    elif tc.get("data_dir"):
        source = f"the prepared folder {tc['data_dir']}"
    elif tc.get("dataset"):
        source = f"the Hugging Face dataset {tc['dataset']}"
    elif tc.get("data_path"):
        source = tc["data_path"]
    else:
        source = "the built-in corpus (the Python standard library's source)"
    return f"{source}, starting from {tc['init_from']}" if tc.get("init_from") else source


def optimizer(tc):
    lr = f"lr {tc['lr']:g}" + (f", Muon lr {tc['muon_lr']:g}" if tc["optimizer"] == "muon" else "")
    return f"{tc['optimizer']} ({lr}), {tc['warmup_iters']} warmup steps then {tc['lr_schedule']} to {tc['min_lr_frac']:g} of the peak"


def validation_table(latest, best, step, objective=None):
    rows = [("this checkpoint", {"step": step, **(latest or {})}), ("best", best or {})]
    rows = [(what, r) for what, r in rows if _finite(r.get("val_loss"))]
    if not rows:
        return ["No validation recorded."]
    if objective in ALIGNMENT_COLUMNS:  # its own figures, not a language-modelling loss
        header, figure = ALIGNMENT_COLUMNS[objective]
        lines = [f"| | step | {header} |", "| --- | --- | --- |"]
        return lines + [f"| {what} | {r.get('step', '—')} | {figure(r)} |" for what, r in rows]
    lines = ["| | step | loss (nats/token) | perplexity | bits per byte |", "| --- | --- | --- | --- | --- |"]
    for what, r in rows:
        loss, bpb = r["val_loss"], r.get("val_bpb")
        lines.append(f"| {what} | {r['step'] if 'step' in r else '—'} | {loss:.4f} | {math.exp(min(loss, 700)):.2f} | "
                     f"{f'{bpb:.4f}' if _finite(bpb) else '—'} |")
    return lines


def _accuracy(r):
    return f"{r['val_loss']:.4f}, {100 * r['val_accuracy']:.1f}%" if _finite(r.get("val_accuracy")) else f"{r['val_loss']:.4f}, —"


ALIGNMENT_COLUMNS = {  # objective: (column header, the figure of an evaluation record)
    "reward": ("loss, pairwise accuracy on held-out pairs", _accuracy),
    "dpo": ("DPO loss, implicit-reward accuracy on held-out pairs", _accuracy),
    "ppo": ("mean reward of greedy replies to held-out prompts", lambda r: f"{-r['val_loss']:.4f}"),
    "grpo": ("mean reward of greedy replies to held-out prompts", lambda r: f"{-r['val_loss']:.4f}"),
}


def reward_model_usage(out_dir):
    ckpt = shlex.quote(str(out_dir))
    return ["# a reward model: it scores replies (sample.py and chat.py refuse it)",
            f"python align.py score --reward_model={ckpt} --pairs=PAIRS.jsonl        # pairwise accuracy",
            f"python align.py score --reward_model={ckpt} --conversations=CHATS.jsonl  # a score per conversation",
            "# PPO against it",
            f"python train.py --objective=ppo --reward_model={ckpt} --init_from=POLICY --prompts=PROMPTS.jsonl --out_dir=out_ppo"]


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def usage(out_dir, tc, chat_tuned):
    ckpt = shlex.quote(str(out_dir))
    prompt = shlex.quote(tc.get("sample_prompt") or "Once upon a time")
    lines = ["# completions (a folder means its best.pt, else last.pt)", f"python sample.py --ckpt={ckpt} --prompt={prompt}"]
    if chat_tuned:
        lines += ["# chat in the terminal", f"python chat.py --ckpt={ckpt}"]
    else:
        lines += ["# not fine-tuned for chat: fine-tune it on conversations first, then chat.py --ckpt=THAT_FOLDER",
                  f"python train.py --init_from={ckpt} --chat_data=chats.jsonl --out_dir={shlex.quote(f'{out_dir}_chat')}"]
    lines += ["# loss, perplexity and bits per byte on any text file", f"python evaluate.py --ckpt={ckpt} --data=FILE",
              "# training curves from metrics.jsonl", f"python plot.py {ckpt} --out={shlex.quote(str(Path(out_dir) / 'curves.png'))}"]
    command = training_command(tc, out_dir)
    if command:
        lines += ["# how it was trained: the same command again resumes from last.pt", command]
    return lines


def training_command(tc, out_dir):
    """`python train.py` with the options where this run differs from plain `python train.py` (config/default.py)."""
    if not tc:
        return None
    from gptkit.train_config import TrainConfig

    plain = asdict(parse_options(TrainConfig, [], description="", default_config="default"))
    tc = {**tc, "out_dir": str(out_dir)}
    return shlex.join(["python", "train.py", *(f"--{k}={format_value(v)}" for k, v in tc.items() if k in plain and plain[k] != v)])


def card_from_checkpoint(path):
    """Write the card of a checkpoint folder (or of the folder holding a checkpoint file); returns its path."""
    from gptkit.checkpoint import BEST, LAST, build_model, load_checkpoint, resolve_checkpoint
    from gptkit.plotting import read_metrics
    from gptkit.tokenizer import Tokenizer

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    main_path = folder / LAST if path.is_dir() and (folder / LAST).is_file() else resolve_checkpoint(path)
    ckpt = load_checkpoint(main_path)
    step = ckpt.get("step", 0)
    model, _ = build_model(ckpt, reward_model=bool(ckpt["model_config"].get("score_head")))
    tokenizer = Tokenizer.from_json(ckpt["tokenizer"])
    best, latest = {"val_loss": ckpt.get("best_val_loss")}, None
    if "val_loss" in ckpt:  # best.pt: its own evaluation is the latest and the best
        latest = best = {"step": step, "val_loss": ckpt["val_loss"], "val_bpb": ckpt.get("val_bpb")}
    elif (folder / BEST).is_file():
        saved = load_checkpoint(folder / BEST)
        if saved.get("step", 0) <= step:  # not a later best than this checkpoint
            best = {"step": saved.get("step"), "val_loss": saved.get("val_loss"), "val_bpb": saved.get("val_bpb")}
    if latest is None:
        try:
            _, evals, _ = read_metrics(folder)
            latest = next((r for r in reversed(evals) if r.get("iter") == step), None)
        except UsageError:  # no metrics.jsonl beside it
            pass
    return write_model_card(folder, model_config=ckpt["model_config"], train_config=ckpt.get("train_config"),
                            n_params=model.num_params(), step=step, tokens_seen=ckpt.get("tokens_seen"),
                            tokenizer_kind=tokenizer.kind, n_vocab=tokenizer.n_vocab, latest=latest, best=best,
                            chat_tuned=bool(ckpt.get("chat_tuned")), date=datetime.fromtimestamp(main_path.stat().st_mtime))


def main():
    cfg = parse_options(CardConfig, description=__doc__, positional=None)
    print(f"wrote {card_from_checkpoint(cfg.ckpt)}")


if __name__ == "__main__":
    run_cli(main)
