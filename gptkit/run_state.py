"""The loop's resumable state in one place: counters, the spike guard, the objective's data position, the RNGs.

RunState.state_dict() is everything last.pt holds besides the model, tokenizer and optimizers; load_state_dict()
puts a run back exactly where it was, so a resumed run's losses match an uninterrupted one's bit for bit.
"""
import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from gptkit.spike_guard import SpikeGuard


@dataclass
class RunState:
    step: int = 0
    tokens_seen: int = 0
    best_val_loss: float = math.inf
    skipped_steps: int = 0
    spikes: SpikeGuard = field(default_factory=lambda: SpikeGuard(0.0))

    def state_dict(self, objective):
        """This state, the objective's (its data position under "loader", the rest under "objective") and the RNGs'."""
        return {"step": self.step, "tokens_seen": self.tokens_seen, "best_val_loss": self.best_val_loss, "skipped_steps": self.skipped_steps,
                "spikes": self.spikes.state_dict(), "loader": objective.train_batches.state_dict(), "objective": objective.state_dict(),
                "rng": rng_state()}

    def load_state_dict(self, state, objective):
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.best_val_loss, self.skipped_steps = state["best_val_loss"], state["skipped_steps"]
        if state["spikes"] is not None:
            self.spikes.load_state_dict(state["spikes"])
        objective.train_batches.load_state_dict(state["loader"])
        objective.load_state_dict(state["objective"])
        restore_rng_state(state["rng"])


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), position, has_gauss, gauss], "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng_state(state):
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
