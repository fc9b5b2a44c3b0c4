"""The optional loss-spike policy (--loss_spike): a step whose loss is far above the recent ones is skipped."""
import math


class SpikeGuard:
    """Flags a loss far above the recent ones: an exponential moving mean and variance of the accepted steps' losses."""

    def __init__(self, threshold, decay=0.95, warmup=20):
        self.threshold, self.decay, self.warmup = threshold, decay, warmup
        self.mean, self.var, self.count = 0.0, 0.0, 0

    def is_spike(self, loss):
        return bool(self.threshold) and self.count >= self.warmup and loss > self.mean + self.threshold * math.sqrt(self.var)

    def update(self, loss):
        delta = loss - self.mean if self.count else 0.0
        self.mean = self.mean + (1 - self.decay) * delta if self.count else loss
        self.var = self.decay * (self.var + (1 - self.decay) * delta * delta)
        self.count += 1

    def state_dict(self):
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state):
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]
