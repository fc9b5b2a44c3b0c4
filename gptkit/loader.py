"""Batches from token shards: random training windows, and fixed validation windows that cover the split in order."""
import numpy as np

from gptkit.errors import UsageError


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


SORTED_BATCHES = 16  # batches whose conversations are drawn together and sorted by length: little padding, still shuffled


class ConversationBatches:
    """Training batches of rendered conversations, shuffled anew every epoch; resumable from (epoch, index).

    Rows are padded to the longest in the batch; targets are -1 where the loss mask is 0 and on padding. To pad
    little, each run of SORTED_BATCHES batches of the shuffled rows is sorted by length, cut into batches, and those
    batches are shuffled: a batch holds conversations of about one length (lengths spread evenly from 10 to 300 pad
    to 1.05x their tokens, against 1.7x in batches of 8 drawn freely).
    """

    def __init__(self, rows, batch_size, seed, pad_id):
        if not rows:
            raise UsageError("no conversation fits the context; raise --block_size or use shorter conversations")
        self.rows, self.batch_size, self.seed, self.pad_id = rows, batch_size, seed, pad_id
        self.lengths = np.array([len(ids) for ids, _ in rows])
        self.epoch, self.index = 0, 0
        self.order = self._order()

    def _order(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        shuffled, span, order = rng.permutation(len(self.rows)), self.batch_size * SORTED_BATCHES, []
        for start in range(0, len(shuffled), span):
            run = shuffled[start:start + span]
            run = run[np.argsort(self.lengths[run], kind="stable")]
            batches = [run[i:i + self.batch_size] for i in range(0, len(run), self.batch_size)]
            order += [batches[i] for i in rng.permutation(len(batches))]
        return np.concatenate(order)

    def next_batch(self):
        picked = []
        while len(picked) < self.batch_size:
            if self.index == len(self.rows):
                self.epoch, self.index = self.epoch + 1, 0
                self.order = self._order()
            picked.append(self.rows[self.order[self.index]])
            self.index += 1
        return padded_batch(picked, self.pad_id)

    def state_dict(self):
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state):
        self.epoch, self.index = state["epoch"], state["index"]
        self.order = self._order()


def conversation_batches(rows, batch_size, pad_id):
    """Every row once, in order, in batches (validation)."""
    for start in range(0, len(rows), batch_size):
        yield padded_batch(rows[start:start + batch_size], pad_id)


def padded_batch(rows, pad_id):
    """(x, y) int64 arrays (B, T) from (ids, mask) rows; y is -1 wherever no loss is taken."""
    width = max(len(ids) for ids, _ in rows) - 1
    x = np.full((len(rows), width), pad_id, dtype=np.int64)
    y = np.full((len(rows), width), -1, dtype=np.int64)
    for i, (ids, mask) in enumerate(rows):
        ids, mask = np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool)
        x[i, :len(ids) - 1] = ids[:-1]
        y[i, :len(ids) - 1] = np.where(mask[1:], ids[1:], -1)
    return x, y


class IndexBatches:
    """Batches of indices into a list of examples (preference pairs, prompts), reshuffled every epoch; resumable from (epoch, index)."""

    def __init__(self, n, batch_size, seed):
        if n < 1:
            raise UsageError("no examples to train on")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.index = 0, 0
        self.order = np.random.default_rng([seed, 0]).permutation(n)

    def next_batch(self):
        picked = []
        while len(picked) < self.batch_size:
            if self.index == self.n:
                self.epoch, self.index = self.epoch + 1, 0
                self.order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
            picked.append(int(self.order[self.index]))
            self.index += 1
        return picked

    def state_dict(self):
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state):
        self.epoch, self.index = state["epoch"], state["index"]
        self.order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
