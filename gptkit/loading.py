"""What --ckpt and --init_from accept: our checkpoint, a Hugging Face GPT-2 folder (or what export.py wrote), or a hub name."""
from pathlib import Path

from gptkit import hf
from gptkit.checkpoint import BEST, LAST, load_checkpoint, resolve_checkpoint
from gptkit.errors import UsageError
from gptkit.sharded_checkpoint import FIELDS_FILE, consolidated, latest_sharded


def load_any_checkpoint(spec, map_location="cpu"):
    """Our checkpoint (a file, or a folder with best.pt or last.pt, or else a sharded checkpoint: one of its folders, or
    the newest in out_dir/sharded/), a folder with config.json (Hugging Face GPT-2, or what export.py wrote), or a
    GPT-2 hub name, as one checkpoint dict."""
    if hf.is_pretrained(spec):
        return hf.hf_checkpoint(spec)
    path = Path(spec)
    if path.is_dir() and not any((path / name).is_file() for name in (BEST, LAST)):
        sharded = path if (path / FIELDS_FILE).is_file() else latest_sharded(path)
        if sharded is not None:
            return {**consolidated(sharded), "path": str(sharded)}
    return load_checkpoint(spec, map_location)


def default_chat_checkpoint(ckpt):
    """What chat.py and serve.py load: --ckpt when given, else out_chat/ (the chat demo) when it holds a checkpoint, else out/."""
    if ckpt:
        return ckpt
    for folder in ("out_chat", "out"):
        try:
            return str(resolve_checkpoint(folder))
        except UsageError:
            continue
    raise UsageError("no checkpoint in out_chat/ or out/; train one (python train.py, then python train.py config/chat_demo.py) or pass --ckpt")


def checkpoint_name(spec):
    """A short name for what --ckpt names: out for out/ or out/best.pt (train.py's files), run1 for run1.pt, gpt2 for a hub name."""
    path = Path(spec)
    if path.suffix == ".pt" and path.name not in (BEST, LAST):
        return path.stem
    folder = path.parent if path.suffix == ".pt" else path
    return folder.resolve().name or "model"
