"""Turn a corpus into token shards and meta.json: what data/prepare.py runs, and train.py when its data is not prepared yet."""
import functools
import hashlib
import itertools
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from gptkit.errors import UsageError
from gptkit.files import atomic_write, check_output, clean_temporaries, require_file
from gptkit.options import check_values, option
from gptkit.shards import META_FILE, TOKENIZER_FILE, ShardWriter, token_dtype, write_meta
from gptkit.sources import SourceFiles, builtin_corpus_files, dataset_documents, expand_inputs, file_documents
from gptkit.tokenizer import TOKENIZER_KINDS, byte_tokenizer, gpt2_tokenizer, train_bpe_tokenizer, utf8_length
from gptkit.tokenizing import tokenize_documents

PREPARED_ROOT_ENV = "GPTKIT_PREPARED"  # where prepared folders go by default: this variable, else prepared/ in the current folder


@dataclass
class PrepareConfig:
    inputs: list[str] = option([], "text files, folders or globs (.txt .md .py .jsonl); with none and no --dataset, the built-in corpus")
    dataset: str = option("", "a Hugging Face dataset name (or a local folder of data files) read through `datasets`")
    split: str = option("train", "the dataset split to read")
    text_field: str = option("text", "the field holding the text in .jsonl files and datasets")
    streaming: bool = option(False, "stream the dataset instead of downloading it whole (for large ones)")
    max_documents: int = option(0, "stop after this many documents (0: all)", bounds=">=0")
    out_dir: str = option("", "where to write the shards (default: prepared/NAME-HASH-TOKENIZER)")
    tokenizer: str = option("bpe", "bpe: trained on this corpus with rustbpe; bytes: 256 byte ids; gpt2: tiktoken's GPT-2", TOKENIZER_KINDS)
    vocab_size: int = option(4096, "vocabulary size of a trained bpe tokenizer, special tokens included", bounds="[1, 16777216]")
    tokenizer_train_bytes: int = option(500_000_000, "train the bpe tokenizer on at most this many bytes of training text; its memory "
                                        "grows with this (the distinct words of that text), not with the corpus", bounds=">0")
    val_fraction: float = option(0.01, "share of documents held out for validation, picked by a hash of each one's path (or record index); raised "
                                 "to expect 32 documents (at most 10%) when the files can be counted; the last one's tail when they are few",
                                 bounds="[0, 1)")
    val_file: str = option("", "a file held out as the validation text instead of --val_fraction")
    shard_tokens: int = option(100_000_000, "tokens per shard file", bounds="[1, 4294967296]")
    workers: int = option(0, "tokenizer threads (0: one per CPU core)", bounds="[0, 1024]")


# What preparing a source gives (the built-in corpus's files, how validation is chosen): part of the default folder's
# hash, so a folder prepared the old way is not reused. 2: generated tables out, validation by hash of each document's key.
PREPARATION_VERSION = 2
MIN_VAL_DOCUMENTS = 32  # held-out documents to expect when their count is known: fewer measure the loss too coarsely
MAX_RAISED_FRACTION = 0.1  # ...but reaching that many never raises the held-out share above this


def default_data_dir(cfg):
    """prepared/NAME-HASH-TOKENIZER (under $GPTKIT_PREPARED when set), where HASH tells apart sources with the same name."""
    if cfg.dataset:
        name, spec = Path(cfg.dataset.rstrip("/")).name, f"{cfg.dataset}:{cfg.split}:{cfg.text_field}"
    elif cfg.inputs:
        name, spec = Path(cfg.inputs[0].rstrip("/")).stem or "corpus", "|".join(str(Path(i).resolve()) for i in cfg.inputs)
    else:
        name, spec = "stdlib", f"python{sys.version_info.major}.{sys.version_info.minor}"
    spec += f"|{cfg.val_fraction}|{cfg.val_file}|{cfg.max_documents}|v{PREPARATION_VERSION}"
    tokenizer = f"bpe{cfg.vocab_size}" if cfg.tokenizer == "bpe" else cfg.tokenizer
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(os.environ.get(PREPARED_ROOT_ENV, "prepared")) / f"{safe}-{hashlib.sha1(spec.encode()).hexdigest()[:6]}-{tokenizer}"


def corpus_documents(cfg):
    """((key, text) iterator, total bytes or None, number of documents or None when not known up front, a description).

    A key is the same on every machine: a file's path under the input given (KEY:LINE for a .jsonl record), or a
    dataset record's index.
    """
    if cfg.dataset:
        texts = dataset_documents(cfg.dataset, cfg.split, cfg.text_field, cfg.streaming)
        docs = ((str(index), text) for index, text in enumerate(texts))
        total, count, what = None, None, f"dataset {cfg.dataset} ({cfg.split})"
    else:
        files = expand_inputs(cfg.inputs) if cfg.inputs else SourceFiles([("the built-in corpus", functools.partial(iter, builtin_corpus_files()))])
        docs = (doc for f in files for doc in file_documents(f.path, cfg.text_field, f.key))
        total = files.size
        count = None if files.jsonl else files.count  # a .jsonl file holds any number
        what = f"{files.count} file{'s' * (files.count != 1)}" if cfg.inputs else f"the built-in corpus ({files.count} files of Python's standard library)"
    if cfg.max_documents:
        docs = itertools.islice(docs, cfg.max_documents)
        count = None if count is None else min(count, cfg.max_documents)
    return docs, total, count, what


def held_out_fraction(val_fraction, count):
    """(share of documents to hold out, a line saying why when it is not val_fraction).

    With the number of documents known, val_fraction is raised until MIN_VAL_DOCUMENTS are expected (at most to
    MAX_RAISED_FRACTION); 0 when even that expects less than one (a few big files): their last one's tail is held out.
    """
    if count is None:
        return val_fraction, None
    fraction = max(val_fraction, min(MAX_RAISED_FRACTION, MIN_VAL_DOCUMENTS / max(1, count)))
    if fraction * count < 1:
        return 0.0, None
    if fraction == val_fraction:
        return fraction, None
    return fraction, (f"holding out {fraction:.1%} of the {count:,} documents for validation (--val_fraction={val_fraction:g} "
                      f"would expect {val_fraction * count:.1f} of them, too few to measure)")


def is_held_out(key, fraction):
    """Whether the document keyed `key` is validation: its key's SHA-1 read as a number in [0, 1), below `fraction`.
    The same on every machine and in any order, and a larger fraction holds out the same documents and more."""
    digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()  # surrogateescape: a file name that is not UTF-8
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def split_documents(docs, fraction, tail_fraction):
    """Yield (split, text) for (key, text) documents: validation when is_held_out(key, fraction), else training.

    When that leaves a split empty (one big file, a fraction of 0), the last document is cut instead, at a line break:
    its head is training text and its tail, sized tail_fraction of all the text, validation.
    """
    counts = {"train": 0, "val": 0}
    total_chars, previous = 0, None
    for key, doc in docs:
        if previous is not None:
            yield previous
        total_chars += len(doc)
        split = "val" if is_held_out(key, fraction) else "train"
        counts[split] += 1
        previous = (split, doc)
    if previous is None:
        return
    if counts["train"] and counts["val"]:
        yield previous
        return
    doc = previous[1]
    cut = doc.rfind("\n", 0, max(1, len(doc) - int(total_chars * tail_fraction)))
    cut = cut + 1 if cut > 0 else len(doc) // 2  # no line break: cut in the middle
    yield "train", doc[:cut]
    yield "val", doc[cut:]


def labelled_documents(cfg):
    """((split, text) iterator, total bytes or None, a description, a line about the held-out share or None)."""
    docs, total, count, what = corpus_documents(cfg)
    if cfg.val_file:
        val = (("val", d) for _, d in file_documents(require_file(cfg.val_file, "--val_file"), cfg.text_field))
        return itertools.chain((("train", d) for _, d in docs), val), total, what, None
    fraction, note = held_out_fraction(cfg.val_fraction, count)
    return split_documents(docs, fraction, cfg.val_fraction), total, what, note


def build_tokenizer(cfg):
    if cfg.tokenizer == "bytes":
        return byte_tokenizer()
    if cfg.tokenizer == "gpt2":
        return gpt2_tokenizer()
    print(f"training a {cfg.vocab_size}-token BPE tokenizer with rustbpe ...", flush=True)
    labelled, _, _, _ = labelled_documents(cfg)
    sample = CappedText((text for split, text in labelled if split == "train"), cfg.tokenizer_train_bytes)
    started = time.perf_counter()
    tokenizer = train_bpe_tokenizer(sample, cfg.vocab_size)
    peak = peak_memory_mb()
    print(f"trained in {time.perf_counter() - started:.1f} s on {sample.used / 1e6:,.1f} MB of text"
          + (f" (peak memory so far {peak:,.0f} MB)" if peak else ""), flush=True)
    return tokenizer


class CappedText:
    """The texts, up to `limit` UTF-8 bytes in all: the one that crosses it is cut at a line break to fit, and
    iteration stops there. `used` counts the bytes handed out. What bounds the memory of BPE training: rustbpe
    streams the texts, but keeps every distinct word (pre-tokenized piece) of them, with its count and bytes."""

    def __init__(self, texts, limit):
        self.texts, self.limit, self.used = texts, int(limit), 0

    def __iter__(self):
        for text in self.texts:
            room = self.limit - self.used
            if room <= 0:
                return
            size = utf8_length(text)
            if size > room:
                head = _head(text, room)
                self.used += utf8_length(head)
                yield head
                return
            self.used += size
            yield text


def _head(text, limit):
    """The longest start of `text` that ends at a line break and holds at most `limit` UTF-8 bytes (any start, without one)."""
    head = text[:limit] if text.isascii() else text.encode("utf-8", "surrogatepass")[:limit].decode("utf-8", "ignore")
    line_end = head.rfind("\n")
    return head[:line_end + 1] if line_end >= 0 else head


def peak_memory_mb():
    """This program's peak resident memory so far, in MB (10^6 bytes); None where it cannot be known (Windows).

    On Linux, /proc's VmHWM: getrusage's ru_maxrss would also count the peak of whatever process started this one,
    which the kernel carries across exec (a parent that has imported torch made it 250 MB here).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) * 1024 / 1e6 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        pass
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 1e6


def prepare(cfg):
    """Prepare the corpus into cfg.out_dir (or the default folder); returns the folder."""
    check_values(cfg)  # bounds, for a config built in code (train.py's)
    if cfg.val_fraction == 0 and not cfg.val_file:
        raise UsageError("--val_fraction=0 leaves no validation text; give a fraction or --val_file")
    out = check_output(cfg.out_dir, "out_dir", folder=True) if cfg.out_dir else default_data_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    clean_temporaries(out)
    (out / META_FILE).unlink(missing_ok=True)  # the folder is incomplete until the new meta.json lands
    labelled, total, what, note = labelled_documents(cfg)
    if note:
        print(note, flush=True)
    tokenizer = build_tokenizer(cfg)
    dtype = token_dtype(tokenizer.n_vocab)
    print(f"tokenizing {what} with the {tokenizer.kind} tokenizer ({tokenizer.n_vocab} ids) into {out}", flush=True)
    counts, shards = write_shards(labelled, tokenizer, out, cfg.shard_tokens, cfg.workers or os.cpu_count() or 1, total, what)
    splits = {s: {**counts[s], "shards": shards[s]} for s in counts}
    with atomic_write(out / TOKENIZER_FILE, "w") as f:
        f.write(tokenizer.to_json())
    val_text_tokens = counts["val"]["tokens"] - counts["val"]["documents"]  # without the separators
    meta = {
        "version": 1,
        "source": what,
        "prepare_config": asdict(cfg),
        "tokenizer": tokenizer.kind,
        "vocab_size": tokenizer.n_vocab,
        "dtype": dtype.__name__,
        "bytes_per_token_val": counts["val"]["bytes"] / max(1, val_text_tokens),
        "splits": splits,
    }
    write_meta(out, meta)
    listed = {s["file"] for split in splits.values() for s in split["shards"]}
    for stale in out.glob("*.bin"):
        if stale.name not in listed:
            stale.unlink()
    for s in ("train", "val"):
        c = counts[s]
        print(f"{s}: {c['documents']:,} documents, {c['bytes']:,} bytes, {c['tokens']:,} tokens in {len(splits[s]['shards'])} shard(s)")
    print(f"validation bytes per token: {meta['bytes_per_token_val']:.3f}")
    return out


def write_shards(labelled, tokenizer, out, shard_tokens, workers, total, what):
    """Tokenize the (split, text) documents into shards in `out`: ({split: documents, bytes, tokens}, {split: shards}).
    An error or Ctrl-C leaves the finished shards but no half one; meta.json, written after, is what marks them complete."""
    dtype = token_dtype(tokenizer.n_vocab)
    writers = {s: ShardWriter(out, s, dtype, shard_tokens) for s in ("train", "val")}
    counts = {s: {"documents": 0, "bytes": 0, "tokens": 0} for s in writers}
    started = time.perf_counter()
    try:
        with tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=None) as bar:
            for batch in tokenize_documents(labelled, tokenizer, dtype, workers):
                for split, part in batch.items():
                    writers[split].add(part.ids)
                    c = counts[split]
                    c["documents"] += part.documents
                    c["bytes"] += part.bytes
                    c["tokens"] += len(part.ids)
                    bar.update(part.bytes)
        if counts["train"]["bytes"] == 0:
            raise UsageError(f"the corpus is empty: {what} hold no text")
        if counts["val"]["bytes"] == 0:
            raise UsageError("no validation text was held out; raise --val_fraction or give --val_file")
        shards = {s: w.close() for s, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.discard()
        raise
    seconds = time.perf_counter() - started
    megabytes = (counts["train"]["bytes"] + counts["val"]["bytes"]) / 1e6
    peak = peak_memory_mb()
    print(f"tokenized {megabytes:,.1f} MB in {seconds:.1f} s ({megabytes / max(seconds, 1e-9):.2f} MB/s) on {workers} thread{'s' * (workers != 1)}"
          + (f"; peak memory {peak:,.0f} MB" if peak else ""), flush=True)
    return counts, shards
