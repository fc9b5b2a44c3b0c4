"""Turn a corpus into token shards and meta.json: what data/prepare.py runs, and train.py when its data is not prepared yet."""
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
from gptkit.sources import builtin_corpus_files, dataset_documents, expand_inputs, file_documents
from gptkit.tokenizer import TOKENIZER_KINDS, byte_tokenizer, gpt2_tokenizer, train_bpe_tokenizer

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
    tokenizer_train_bytes: int = option(500_000_000, "train the bpe tokenizer on at most this many bytes of training text", bounds=">0")
    val_fraction: float = option(0.01, "fraction of documents held out for validation (the tail of the text when there are few)", bounds="[0, 1)")
    val_file: str = option("", "a file held out as the validation text instead of --val_fraction")
    shard_tokens: int = option(100_000_000, "tokens per shard file", bounds="[1, 4294967296]")
    workers: int = option(0, "tokenizer threads (0: one per CPU core)", bounds="[0, 1024]")


def default_data_dir(cfg):
    """prepared/NAME-HASH-TOKENIZER (under $GPTKIT_PREPARED when set), where HASH tells apart sources with the same name."""
    if cfg.dataset:
        name, spec = Path(cfg.dataset.rstrip("/")).name, f"{cfg.dataset}:{cfg.split}:{cfg.text_field}"
    elif cfg.inputs:
        name, spec = Path(cfg.inputs[0].rstrip("/")).stem or "corpus", "|".join(str(Path(i).resolve()) for i in cfg.inputs)
    else:
        name, spec = "stdlib", f"python{sys.version_info.major}.{sys.version_info.minor}"
    spec += f"|{cfg.val_fraction}|{cfg.val_file}|{cfg.max_documents}"
    tokenizer = f"bpe{cfg.vocab_size}" if cfg.tokenizer == "bpe" else cfg.tokenizer
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(os.environ.get(PREPARED_ROOT_ENV, "prepared")) / f"{safe}-{hashlib.sha1(spec.encode()).hexdigest()[:6]}-{tokenizer}"


def corpus_documents(cfg):
    """(documents iterator, total bytes or None, a description) for the configured source."""
    if cfg.dataset:
        docs = dataset_documents(cfg.dataset, cfg.split, cfg.text_field, cfg.streaming)
        total, what = None, f"dataset {cfg.dataset} ({cfg.split})"
    else:
        files = expand_inputs(cfg.inputs) if cfg.inputs else builtin_corpus_files()
        docs = (doc for path in files for doc in file_documents(path, cfg.text_field))
        total = sum(p.stat().st_size for p in files)
        what = f"{len(files)} file{'s' * (len(files) != 1)}" if cfg.inputs else f"the built-in corpus ({len(files)} files of Python's standard library)"
    if cfg.max_documents:
        docs = itertools.islice(docs, cfg.max_documents)
    return docs, total, what


def split_documents(docs, val_fraction):
    """Yield (split, text): every k-th document is validation, k = 1/val_fraction.

    A corpus of fewer than k documents (one big file, say) instead holds out the tail of its last
    document, cut at a line break, sized to val_fraction of all the text.
    """
    every = max(2, round(1 / val_fraction)) if val_fraction > 0 else 0
    seen_val, total_chars, previous = False, 0, None
    for index, doc in enumerate(docs):
        if previous is not None:
            yield previous
        total_chars += len(doc)
        if every and (index + 1) % every == 0:
            seen_val = True
            previous = ("val", doc)
        else:
            previous = ("train", doc)
    if previous is None:
        return
    split, doc = previous
    if every and not seen_val:
        cut = doc.rfind("\n", 0, max(1, len(doc) - int(total_chars * val_fraction)))
        cut = cut + 1 if cut > 0 else len(doc) // 2  # no line break: cut in the middle
        yield "train", doc[:cut]
        yield "val", doc[cut:]
    else:
        yield split, doc


def labelled_documents(cfg):
    docs, total, what = corpus_documents(cfg)
    if cfg.val_file:
        val = (("val", d) for d in file_documents(require_file(cfg.val_file, "--val_file"), cfg.text_field))
        return itertools.chain((("train", d) for d in docs), val), total, what
    return split_documents(docs, cfg.val_fraction), total, what


def build_tokenizer(cfg):
    if cfg.tokenizer == "bytes":
        return byte_tokenizer()
    if cfg.tokenizer == "gpt2":
        return gpt2_tokenizer()
    print(f"training a {cfg.vocab_size}-token BPE tokenizer with rustbpe ...", flush=True)
    labelled, _, _ = labelled_documents(cfg)
    train_texts = (text for split, text in labelled if split == "train")
    budget = _cap_bytes(train_texts, cfg.tokenizer_train_bytes)
    started = time.time()
    tokenizer = train_bpe_tokenizer(budget, cfg.vocab_size)
    print(f"trained in {time.time() - started:.1f}s", flush=True)
    return tokenizer


def _cap_bytes(texts, limit):
    used = 0
    for text in texts:
        if used >= limit:
            return
        used += len(text)
        yield text


def prepare(cfg):
    """Prepare the corpus into cfg.out_dir (or the default folder); returns the folder."""
    check_values(cfg)  # bounds, for a config built in code (train.py's)
    if cfg.val_fraction == 0 and not cfg.val_file:
        raise UsageError("--val_fraction=0 leaves no validation text; give a fraction or --val_file")
    out = check_output(cfg.out_dir, "out_dir", folder=True) if cfg.out_dir else default_data_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    clean_temporaries(out)
    (out / META_FILE).unlink(missing_ok=True)  # the folder is incomplete until the new meta.json lands
    tokenizer = build_tokenizer(cfg)
    dtype = token_dtype(tokenizer.n_vocab)
    writers = {s: ShardWriter(out, s, dtype, cfg.shard_tokens) for s in ("train", "val")}
    counts = {s: {"documents": 0, "bytes": 0, "tokens": 0} for s in writers}
    labelled, total, what = labelled_documents(cfg)
    print(f"tokenizing {what} with the {tokenizer.kind} tokenizer ({tokenizer.n_vocab} ids) into {out}", flush=True)
    workers = cfg.workers or os.cpu_count() or 1
    with tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=None) as bar:
        for chunk in _chunks(labelled, 4 << 20):
            for (split, text), ids in zip(chunk, tokenizer.encode_batch([t for _, t in chunk], num_threads=workers)):
                ids.append(tokenizer.eot_id)
                writers[split].add(ids)
                n_bytes = len(text.encode("utf-8"))
                c = counts[split]
                c["documents"] += 1
                c["bytes"] += n_bytes
                c["tokens"] += len(ids)
                bar.update(n_bytes)
    if counts["train"]["bytes"] == 0:
        raise UsageError(f"the corpus is empty: {what} hold no text")
    if counts["val"]["bytes"] == 0:
        raise UsageError("no validation text was held out; raise --val_fraction or give --val_file")
    splits = {s: {**counts[s], "shards": w.close()} for s, w in writers.items()}
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


def _chunks(labelled, chunk_chars):
    chunk, size = [], 0
    for item in labelled:
        chunk.append(item)
        size += len(item[1])
        if size >= chunk_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk

