"""What a run reports: metrics.jsonl beside the checkpoints, wandb when asked, MFU on known GPUs, durations."""
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from gptkit.errors import UsageError

# Dense bf16 peak FLOP/s of known GPUs, for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


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
        record = {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in record.items()}  # NaN is not JSON
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        if self.wandb:
            self.wandb.log({k: v for k, v in record.items() if k != "iter"}, step=record["iter"])

    def close(self):
        if self.wandb:
            self.wandb.finish()


class Throughput:
    """Tokens per second and the time left, over the steps since the last restart (so evaluation time is left out)."""

    def __init__(self, step):
        self.restart(step)

    def restart(self, step):
        self.started, self.step, self.tokens = time.time(), step, 0

    def add(self, tokens):
        self.tokens += tokens

    def measure(self, step, max_iters):
        """(tokens per second, seconds left) at `step`."""
        elapsed = time.time() - self.started
        return self.tokens / elapsed, (max_iters - step) * elapsed / (step - self.step)
