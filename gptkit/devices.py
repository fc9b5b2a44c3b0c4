"""Which device to run on, and the autocast context a --dtype option asks for."""
from contextlib import nullcontext

import torch

from gptkit.errors import UsageError


def pick_device(name="auto"):
    """'auto' picks CUDA, then Apple's MPS, then the CPU; a named device must exist here."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise UsageError(f"--device={name}: expected auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device={name} but no CUDA GPU is available; use --device=cpu or --device=auto")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise UsageError(f"--device={name} but this machine has {torch.cuda.device_count()} CUDA GPU(s) (cuda:0 ...); pick one of those")
    if kind == "mps" and not mps:
        raise UsageError(f"--device={name} but Apple's MPS is not available here; use --device=cpu or --device=auto")
    return name


def autocast_for(dtype, device):
    """(whether bf16 is on, the context to run the model in) for a --dtype option: auto is bf16 autocast on CUDA only."""
    use_bf16 = dtype == "bfloat16" or (dtype == "auto" and device.startswith("cuda"))
    return use_bf16, torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if use_bf16 else nullcontext()
