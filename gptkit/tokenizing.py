"""Tokenize a stream of (split, text) documents on a pool of threads, in order and with bounded memory: the loop of
data/prepare.py. It knows nothing of files or shards.

tiktoken lets go of the GIL while it encodes, so the threads encode batches side by side while the caller's thread
reads the next documents and writes the last ids. Each thread gets a batch of documents, not one document, so a
corpus of many small ones costs little Python per document; a batch's ids come back as one numpy array per split,
each document's ids followed by <|endoftext|>, with no Python list of ints built on the way.
"""
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from gptkit.tokenizer import utf8_length

BATCH_CHARS = 1 << 20  # text per batch: its Python overhead is nothing next to encoding it, and batches stay small enough to share out evenly
BATCHES_PER_THREAD = 2  # batches queued per thread, besides the one each is encoding: enough that no thread waits for the next


class Tokenized(NamedTuple):
    """A batch's documents of one split: their ids (each document's, then <|endoftext|>), how many, their UTF-8 bytes."""
    ids: np.ndarray
    documents: int
    bytes: int


def tokenize_documents(labelled, tokenizer, dtype, workers):
    """Yield, for each batch of the (split, text) documents in order, {split: Tokenized}.

    At most (BATCHES_PER_THREAD + 1) x workers batches are read ahead: memory holds that many times BATCH_CHARS of
    text (or the largest document, when bigger) and its ids, whatever the corpus's size.
    """
    pending = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="tokenize") as pool:
        try:
            for batch in _batches(labelled, BATCH_CHARS):
                pending.append(pool.submit(_encode, tokenizer, batch, np.dtype(dtype)))
                if len(pending) > (BATCHES_PER_THREAD + 1) * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # an error or Ctrl-C: the queued batches are dropped, not encoded
            for future in pending:
                future.cancel()


def _batches(labelled, batch_chars):
    batch, size = [], 0
    for item in labelled:
        batch.append(item)
        size += len(item[1])
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encode(tokenizer, batch, dtype):
    """{split: Tokenized} for a batch: what a pool thread runs."""
    texts = {}
    for split, text in batch:
        texts.setdefault(split, []).append(text)
    out = {}
    for split, docs in texts.items():
        encoded = [tokenizer.encode_array(text) for text in docs]
        ids = np.empty(sum(len(e) for e in encoded) + len(encoded), dtype)
        at = 0
        for e in encoded:
            ids[at:at + len(e)] = e  # uint32 from tiktoken into the shards' dtype, which holds every id
            ids[at + len(e)] = tokenizer.eot_id
            at += len(e) + 1
        out[split] = Tokenized(ids, len(docs), sum(utf8_length(text) for text in docs))
    return out
