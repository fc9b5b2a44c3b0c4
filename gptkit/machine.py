"""What every bench script prints besides its figures: the machine it ran on and the command that reproduces it."""
import os
import platform
from dataclasses import MISSING, fields

import torch

from gptkit.options import format_value


def cpu_name():
    """The CPU's model name, as /proc/cpuinfo or the platform gives it."""
    cpu = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    return cpu or platform.processor() or platform.machine() or "unknown CPU"


SPEED_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_bf16", "amx_int8", "asimd", "sve")


def cpu_flags():
    """The CPU's instruction-set flags that decide which kernels are fast (from /proc/cpuinfo; none elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            listed = next((line.split(":", 1)[1].split() for line in f if line.startswith(("flags", "Features"))), [])
    except OSError:
        return []
    return [flag for flag in SPEED_FLAGS if flag in listed]


def describe_machine(device):
    """One line: CPU model, its speed-relevant flags and cores, torch version and threads, the GPU."""
    cpu = cpu_name()
    flags = cpu_flags()
    cpu += f" ({' '.join(flags)})" if flags else ""
    if device.startswith("cuda"):
        gpu = f"GPU {torch.cuda.get_device_name(device)}"
    elif device == "mps":
        gpu = "Apple GPU (mps)"
    else:
        gpu = f"GPU {torch.cuda.get_device_name(0)} unused" if torch.cuda.is_available() else "no GPU"
    threads = torch.get_num_threads()
    return f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} on {threads} thread{'s' * (threads != 1)}, {gpu}"


def reproduce_command(script, cfg, always=()):
    """The command that reruns this measurement: the options named in `always`, then any other that is not its default."""
    parts = [f"python {script}"]
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if f.name in always or value != default:
            parts.append(f"--{f.name}={format_value(value)}")
    return " ".join(parts)


def sync(device):
    """Wait for the GPU, so a timer measures the work and not its queuing."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
