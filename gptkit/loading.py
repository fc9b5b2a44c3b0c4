"""What --ckpt and --init_from accept: our checkpoint, a Hugging Face GPT-2 folder (or what export.py wrote), or a hub name."""
from gptkit import hf
from gptkit.checkpoint import load_checkpoint


def load_any_checkpoint(spec, map_location="cpu"):
    """Our checkpoint (a file, or a folder with best.pt or last.pt), a folder with config.json (Hugging Face GPT-2, or what
    export.py wrote), or a GPT-2 hub name, as one checkpoint dict."""
    if hf.is_pretrained(spec):
        return hf.hf_checkpoint(spec)
    return load_checkpoint(spec, map_location)
