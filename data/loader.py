"""Batches from token shards: random training windows, and fixed validation windows that cover the split in order."""
import numpy as np

from common import UsageError


class RandomWindows:
    """Samples (x, y) batches of random windows of block_size + 1 tokens, shards weighted by their length."""

    def __init__(self, arrays, batch_size, block_size, seed):
        self.arrays = [a for a in arrays if len(a) > block_size]
        if not self.arrays:
            total = sum(len(a) for a in arrays)
            raise UsageError(f"the training data has {total:,} tokens, too few for --block_size={block_size}; lower block_size or use more text")
        starts = np.array([len(a) - block_size for a in self.arrays], dtype=np.float64)
        self.weights = starts / starts.sum()
        self.batch_size, self.block_size = batch_size, block_size
        self.rng = np.random.default_rng(seed)

    def next_batch(self):
        """x, y: int64 arrays of shape (B, T); y is x shifted left by one token."""
        shard_of_row = self.rng.choice(len(self.arrays), size=self.batch_size, p=self.weights)
        rows = []
        for shard in shard_of_row:
            array = self.arrays[shard]
            start = int(self.rng.integers(0, len(array) - self.block_size))
            rows.append(array[start:start + self.block_size + 1])
        batch = np.stack(rows).astype(np.int64)
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]


def sequential_windows(arrays, batch_size, block_size, max_tokens=0):
    """Yield (x, y) batches of consecutive non-overlapping windows over every shard, up to max_tokens targets (0: all).

    The same call always yields the same windows, so successive evaluations are comparable.
    """
    budget = max_tokens or float("inf")
    for array in arrays:
        window = min(block_size, len(array) - 1)  # a shard shorter than the context is scored whole
        rows = []
        for start in range(0, len(array) - window, window):
            if budget <= 0:
                break
            rows.append(np.asarray(array[start:start + window + 1], dtype=np.int64))
            budget -= window
            if len(rows) == batch_size:
                yield _as_batch(rows)
                rows = []
        if rows:
            yield _as_batch(rows)


def _as_batch(rows):
    batch = np.stack(rows)
    return batch[:, :-1], batch[:, 1:]
