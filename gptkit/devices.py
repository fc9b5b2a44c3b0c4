"""Which device to run on, and the autocast context a --dtype option asks for."""
from contextlib import nullcontext

import torch

from gptkit.errors import UsageError


def pick_device(name="auto"):
    """'auto' picks CUDA, then Apple's MPS, then the CPU."""
    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device={name} but no CUDA GPU is available; use --device=cpu or --device=auto")
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def autocast_for(dtype, device):
    """(whether bf16 is on, the context to run the model in) for a --dtype option: auto is bf16 autocast on CUDA only."""
    use_bf16 = dtype == "bfloat16" or (dtype == "auto" and device.startswith("cuda"))
    return use_bf16, torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if use_bf16 else nullcontext()
