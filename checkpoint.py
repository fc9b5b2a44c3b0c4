"""Self-describing checkpoints: model config, weights, tokenizer, training config and state, written atomically.

Loading uses torch.load(weights_only=True), which refuses any object that is not a tensor or plain data,
so a checkpoint can never run code.
"""
import hashlib
import os
import pickle
import shutil
from pathlib import Path

import torch

from common import UsageError, atomic_write, first_line
from data.tokenizer import Tokenizer
from model import GPT, GPTConfig

FORMAT_VERSION = 1
LAST, BEST = "last.pt", "best.pt"


def save_checkpoint(path, model, tokenizer, **extra):
    """Write model config, weights, tokenizer and any extra training state to `path`, atomically."""
    weights = model.state_dict()
    payload = {
        "format_version": FORMAT_VERSION,
        "model_config": vars(model.config).copy(),
        "model": weights,
        "weights_sha256": weights_digest(weights),
        "tokenizer": tokenizer.to_json(),
        **extra,
    }
    with atomic_write(path) as f:
        torch.save(payload, f)


def save_rotating(out_dir, keep_last, model, tokenizer, **extra):
    """Write ckpt_STEP.pt, point last.pt at it (a hard link swapped in atomically), keep only the newest keep_last."""
    out_dir = Path(out_dir)
    path = out_dir / f"ckpt_{extra['step']:07d}.pt"
    save_checkpoint(path, model, tokenizer, **extra)
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
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise UsageError(f"{path} was written by a newer version of the toolkit (format {ckpt['format_version']}); update the code")
    if weights_digest(ckpt["model"]) != ckpt.get("weights_sha256"):
        raise UsageError(f"{path} is corrupted: its weights do not match the checksum saved with them")
    ckpt["path"] = str(path)
    return ckpt


def load_any_checkpoint(spec, map_location="cpu"):
    """What train.py --init_from, sample.py and chat.py --ckpt accept: our checkpoint (a file, or a folder with best.pt or
    last.pt), a folder with config.json (Hugging Face GPT-2, or what export.py wrote), or a GPT-2 hub name."""
    import hf  # here, not at the top: hf.py imports this module

    if hf.is_pretrained(spec):
        return hf.hf_checkpoint(spec)
    return load_checkpoint(spec, map_location)



def build_model(ckpt, device="cpu"):
    """The model and tokenizer a loaded checkpoint describes, weights in place, in eval mode."""
    try:
        config = GPTConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as e:
        raise UsageError(f"{ckpt['path']} has an invalid model config: {e}") from None
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
