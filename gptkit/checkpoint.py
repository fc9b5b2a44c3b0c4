"""Self-describing checkpoints: one schema, versioned, built in one place (make_checkpoint), written atomically.

A checkpoint is a dict of plain data and tensors. Loading uses torch.load(weights_only=True), which refuses any
object that is not a tensor or plain data, so a checkpoint can never run code. Files written by older versions are
upgraded on load (upgrade()), one version at a time.
"""
import dataclasses
import hashlib
import os
import pickle
import shutil
import typing
from pathlib import Path

import torch

from gptkit.errors import UsageError, first_line
from gptkit.files import atomic_write
from gptkit.model import GPT, GPTConfig
from gptkit.tokenizer import Tokenizer

FORMAT_VERSION = 4
LAST, BEST = "last.pt", "best.pt"

# -- the schema -------------------------------------------------------------------------------------------------------
# Every key a checkpoint may hold, with its type. The first group is in every checkpoint; RUN_FIELDS are what
# resuming needs (last.pt); EVAL_FIELDS are the evaluation that made best.pt the best.
NUMBER = (int, float)
MODEL_FIELDS = {
    "format_version": int,
    "model_config": dict,  # GPTConfig's fields
    "model": dict,  # the weights: name -> tensor
    "weights_sha256": str,  # written by write_checkpoint: torch does not check its zip's CRCs
    "tokenizer": str,  # Tokenizer.to_json()
    "chat_tuned": bool,  # fine-tuned on conversations: chat.py and exports use the chat template
    "train_config": (dict, type(None)),  # TrainConfig of the run that wrote it; None for imported weights
}
RUN_FIELDS = {
    "step": int, "tokens_seen": int, "best_val_loss": NUMBER, "skipped_steps": int,
    "optimizers": list,  # each optimizer's state_dict
    "loader": dict,  # the objective's data position
    "objective": dict,  # {"name": ...} and whatever else the objective saves
    "spikes": (dict, type(None)),  # SpikeGuard's state
    "rng": dict,  # python, numpy, torch and cuda generators
}
EVAL_FIELDS = {"val_loss": NUMBER, "val_bpb": NUMBER}
FIELDS = {**MODEL_FIELDS, **RUN_FIELDS, **EVAL_FIELDS}


def make_checkpoint(config, weights, tokenizer, *, chat_tuned=False, train_config=None, **fields):
    """The checkpoint dict: model config, weights, tokenizer, plus any RUN_FIELDS / EVAL_FIELDS given."""
    unknown = sorted(fields.keys() - FIELDS.keys())
    if unknown:
        raise ValueError(f"not checkpoint fields: {', '.join(unknown)}")
    return {"format_version": FORMAT_VERSION, "model_config": vars(config).copy(), "model": weights, "tokenizer": tokenizer.to_json(),
            "chat_tuned": chat_tuned, "train_config": train_config, **fields}


def write_checkpoint(path, ckpt):
    """Write a checkpoint dict to `path` atomically, with the checksum of its weights."""
    with atomic_write(path) as f:
        torch.save({**ckpt, "weights_sha256": weights_digest(ckpt["model"])}, f)


def save_checkpoint(path, model, tokenizer, **fields):
    """Write a plain (not sharded) model's checkpoint: its config, weights, tokenizer and any `fields`."""
    write_checkpoint(path, make_checkpoint(model.config, model.state_dict(), tokenizer, **fields))


def save_rotating(out_dir, keep_last, ckpt):
    """Write ckpt_STEP.pt, point last.pt at it (a hard link swapped in atomically), keep only the newest keep_last."""
    out_dir = Path(out_dir)
    path = out_dir / f"ckpt_{ckpt['step']:07d}.pt"
    write_checkpoint(path, ckpt)
    link = out_dir / f".{LAST}.link{os.getpid()}"
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(path, link)
    os.replace(link, out_dir / LAST)
    for old in sorted(out_dir.glob("ckpt_*.pt"))[:-keep_last]:
        old.unlink()


def weights_digest(state_dict):
    """sha256 over the weights' names and bytes: torch does not check its zip's CRCs, so corruption would load silently."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def resolve_checkpoint(path):
    """A checkpoint file, or a folder holding best.pt (preferred) or last.pt."""
    path = Path(path)
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise UsageError(f"no checkpoint in {path}/ (looked for {BEST} and {LAST}, or config.json of a Hugging Face model); "
                         f"train one with `python train.py --out_dir={path}`")
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist; pass a file, the folder train.py wrote (--out_dir), "
                         "a Hugging Face GPT-2 folder, or a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl)")
    return path


def load_checkpoint(path, map_location="cpu"):
    path = resolve_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UsageError(f"refusing to load {path}: it holds objects other than tensors and plain data, which could run code ({first_line(e)})") from None
    except Exception as e:  # torch raises many kinds for a truncated, empty or foreign file
        raise UsageError(f"{path} is not a readable checkpoint (truncated or corrupted?): {first_line(e)}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or "model_config" not in ckpt or "tokenizer" not in ckpt:
        raise UsageError(f"{path} is not a checkpoint written by this toolkit (missing model, config or tokenizer)")
    version = ckpt.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UsageError(f"{path} was written by a newer version of the toolkit (format {version}); update the code")
    check_fields(ckpt, path)
    model_config_from(ckpt["model_config"], path)
    if weights_digest(ckpt["model"]) != ckpt.get("weights_sha256"):
        raise UsageError(f"{path} is corrupted: its weights do not match the checksum saved with them")
    ckpt = upgrade(ckpt)
    ckpt["path"] = str(path)
    return ckpt


def check_fields(ckpt, path):
    """One line naming the file, the field and the type expected, for a field of the wrong type."""
    for key, value in ckpt.items():
        expected = FIELDS.get(key)
        if expected is not None and (not isinstance(value, expected) or (isinstance(value, bool) and bool not in _types(expected))):
            names = " or ".join("none" if t is type(None) else t.__name__ for t in _types(expected))
            raise UsageError(f"{path}: field {key!r} is a {type(value).__name__}, expected {names}; the file is damaged or not from this toolkit")


def model_config_from(saved, where):
    """The GPTConfig a saved dict describes, every field of the right type; otherwise one line naming the file and the field."""
    hints = typing.get_type_hints(GPTConfig)
    for f in dataclasses.fields(GPTConfig):
        if f.name not in saved:
            continue
        value, tp = saved[f.name], hints[f.name]
        ok = isinstance(value, bool) if tp is bool else (
            not isinstance(value, bool) and (isinstance(value, tp) or (tp is float and isinstance(value, int))))
        smallest = 0 if f.name == "window" else 1  # sizes are positive; a window of 0 means dense
        if ok and tp is int and value < smallest:
            ok = False
        if not ok:
            wanted = ("a positive int" if smallest else "an int >= 0") if tp is int else tp.__name__
            raise UsageError(f"{where}: model setting {f.name!r} is {value!r}, expected {wanted}; the file is damaged or not from this toolkit")
    try:
        return GPTConfig.from_dict(saved)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{where} has an invalid model config: {e}") from None


def _types(expected):
    return expected if isinstance(expected, tuple) else (expected,)


def upgrade(ckpt):
    """Bring a checkpoint of an older format up to FORMAT_VERSION, one version at a time."""
    if ckpt.get("format_version", 0) < 2:  # 0 and 1 -> 2: every model field present; a last.pt names its objective
        ckpt = {"chat_tuned": False, "train_config": None, **ckpt}
        if "optimizers" in ckpt:
            tc = ckpt["train_config"] or {}
            ckpt = {"skipped_steps": 0, "spikes": None, **ckpt,
                    "objective": {"name": "chat_sft" if tc.get("chat_data") or tc.get("chat_dataset") else "next_token"}}
        ckpt["format_version"] = 2
    if ckpt["format_version"] < 3:  # 2 -> 3: the model config names its attention pattern (none: dense, as before)
        ckpt["model_config"] = {**ckpt["model_config"], "window": 0, "attn_pattern": ""}
        ckpt["format_version"] = 3
    if ckpt["format_version"] < 4:  # 3 -> 4: the model config says whether it is a reward model (none was before)
        ckpt["model_config"] = {**ckpt["model_config"], "score_head": False}
        ckpt["format_version"] = 4
    return ckpt


def build_model(ckpt, device="cpu", reward_model=False):
    """The model and tokenizer a loaded checkpoint describes, weights in place, in eval mode. A reward model (it scores
    replies rather than writing them) is refused unless reward_model=True, and then only a reward model is taken."""
    config = model_config_from(ckpt["model_config"], ckpt["path"])
    if config.score_head and not reward_model:
        raise UsageError(f"{ckpt['path']} is a reward model: it scores replies and does not write them; load the policy it was trained "
                         "for, or score replies with `python align.py score --reward_model=...`")
    if reward_model and not config.score_head:
        raise UsageError(f"{ckpt['path']} is not a reward model; train one with `python train.py --objective=reward ...`")
    model = GPT(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UsageError(f"{ckpt['path']}: the weights do not fit the model config they were saved with ({first[:160]})") from None
    tokenizer = Tokenizer.from_json(ckpt["tokenizer"])
    if tokenizer.n_vocab > config.vocab_size:
        raise UsageError(f"{ckpt['path']}: its tokenizer has {tokenizer.n_vocab} ids but the model only {config.vocab_size}")
    return model.to(device).eval(), tokenizer
