"""What every training objective shares (gptkit/objectives.py describes the shape the loop expects)."""
from gptkit.errors import UsageError


class Objective:
    """What every objective shares: its name in the checkpoint (resuming checks it), and quiet defaults."""

    name = "objective"
    chat_tuned = False  # the checkpoint it writes is fine-tuned for chat
    score_head = False  # the model it trains has a score head (a reward model)
    loss_units = None  # set when the training loss and val_loss measure the same thing: train.py then prints their gap

    def step_metrics(self):
        """Figures to log with the training loss at this step (means since the last call)."""
        return {}

    def eval_line(self, metrics):
        return f"val loss {metrics['val_loss']:.4f} nats/token, {metrics['val_bpb']:.4f} bits/byte"

    def state_dict(self):
        return {"name": self.name}

    def load_state_dict(self, state):
        if state.get("name") != self.name:
            raise UsageError(f"the checkpoint was saved by a {state.get('name')} run and this one trains {self.name}; resume with the same "
                             "data options, start over with --resume=false, or use another --out_dir")


class Tally:
    """Running means of named figures between two reports."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def add(self, **values):
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
            self.counts[name] = self.counts.get(name, 0) + 1

    def take(self):
        means = {name: self.sums[name] / self.counts[name] for name in self.sums}
        self.sums, self.counts = {}, {}
        return means
