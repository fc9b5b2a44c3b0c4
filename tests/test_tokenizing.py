"""tokenize_documents, data/prepare.py's loop: the ids tiktoken's encode_ordinary_batch gives, in order, per split,
whatever the batching; byte counts; errors from the threads; and a bounded read-ahead."""
import numpy as np
import pytest

from gptkit import tokenizing
from gptkit.errors import UsageError
from gptkit.tokenizing import tokenize_documents
from helpers import SAMPLES


def labelled_corpus(corpus_text):
    """(split, text) documents of every size, in several scripts, every fifth one held out."""
    lines = corpus_text.splitlines(keepends=True)
    docs = ["".join(lines[i:i + n]) for i, n in zip(range(0, len(lines), 7), [1, 2, 7, 40, 3] * 200)]
    docs += [*SAMPLES.values(), ""]
    return [("val" if i % 5 == 0 else "train", doc) for i, doc in enumerate(docs)]


def collect(batches):
    out = {}
    for batch in batches:
        for split, part in batch.items():
            ids, documents, size = out.get(split, ([], 0, 0))
            out[split] = (ids + [part.ids], documents + part.documents, size + part.bytes)
    return {split: (np.concatenate(ids), documents, size) for split, (ids, documents, size) in out.items()}


@pytest.mark.parametrize("batch_chars", [1, 300, 1 << 20])
def test_ids_are_tiktokens_own_in_order_with_a_separator_after_each_document(bpe_tok, corpus_text, monkeypatch, batch_chars):
    monkeypatch.setattr(tokenizing, "BATCH_CHARS", batch_chars)  # one document a batch, a few, or all in one
    labelled = labelled_corpus(corpus_text)
    got = collect(tokenize_documents(iter(labelled), bpe_tok, np.uint16, workers=2))
    for split in ("train", "val"):
        texts = [text for s, text in labelled if s == split]
        expected = [i for ids in bpe_tok.encoding.encode_ordinary_batch(texts, num_threads=2) for i in [*ids, bpe_tok.eot_id]]
        ids, documents, size = got[split]
        assert ids.dtype == np.uint16 and ids.tolist() == expected
        assert documents == len(texts)
        assert size == sum(len(t.encode("utf-8")) for t in texts)


def test_a_lone_surrogate_in_a_thread_is_a_usage_error(bytes_tok):
    labelled = [("train", "fine")] * 5 + [("train", "bad \ud800")]
    with pytest.raises(UsageError, match="not valid Unicode"):
        collect(tokenize_documents(iter(labelled), bytes_tok, np.uint16, workers=2))


def test_documents_are_read_only_a_few_batches_ahead(bytes_tok, monkeypatch):
    """Memory stays bounded: the loop reads ahead at most (BATCHES_PER_THREAD + 1) batches per thread, not the corpus."""
    monkeypatch.setattr(tokenizing, "BATCH_CHARS", 10)
    read = []

    def documents():
        for i in range(10_000):
            read.append(i)
            yield "train", "ten chars!"

    batches = tokenize_documents(documents(), bytes_tok, np.uint16, workers=2)
    next(batches)
    assert len(read) <= (tokenizing.BATCHES_PER_THREAD + 1) * 2 + 1
    batches.close()
