"""Data preparation at scale: python bench/prepare.py [--gb=1.0 | --sizes=0.25,0.5,1.0] [--key=value ...]

For each size, makes a corpus of that many gigabytes (10^9 bytes) on this machine, runs data/prepare.py on it in a subprocess,
and reports the run's wall time, its BPE training (time, text, and peak memory by then), its tokenizing speed and the
peak resident memory of the whole run, from the "trained in" and "tokenized" lines prepare prints (it reads its own
high-water mark: a child's ru_maxrss would count its parent's peak too, which Linux carries across exec). Then it
times tiktoken's own encode_ordinary_batch on the first --tiktoken_sample_mb of the same files, with the tokenizer
prepare trained and the same threads: the ceiling for that tokenizer, since prepare adds reading, splitting and
writing around the same encoder. MB are 10^6 bytes, of text or of memory.

The corpus is Python's standard library (the built-in corpus's files) copied until it is big enough, every copy but
the first perturbed so that BPE and the validation split see varied documents: the blank-line-separated blocks of
each file shuffled (seeded by copy and file), and a few common identifiers renamed per copy. It goes in a temporary
folder under --work_dir (prepared/, which git ignores, by default), removed with prepare's output at the end unless
--keep=true. Ends with `prepare: gb=... mb_s=... tiktoken_ratio=... peak_rss_mb=...`, a line per size.
For a quick run: --gb=0.01 --tokenizer_train_bytes=2e6.
"""
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gptkit.errors import UsageError, run_cli
from gptkit.machine import describe_machine, reproduce_command
from gptkit.options import option, parse_options
from gptkit.sources import builtin_corpus_files
from gptkit.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
PREPARE = REPO / "data" / "prepare.py"
# Renamed in every copy after the first (to NAME_TAG, TAG telling the copies apart), wherever they occur: common enough
# in the standard library that each copy brings BPE new words, as a larger corpus does.
RENAMED = ("self", "name", "value", "result", "data", "path", "args", "line", "text", "index", "count", "item", "node", "key")
SPACE_FACTOR = 2.0  # free disk wanted per byte of corpus: the corpus, its shards (about 0.6 of it with a BPE) and room to spare
TIKTOKEN_BATCH = 16_000_000  # bytes of documents per encode_ordinary_batch call: big, so its threads seldom wait at the batch's end


@dataclass
class BenchConfig:
    gb: float = option(1.0, "size of the corpus, in GB (10^9 bytes)", bounds=">0")
    sizes: list[float] = option([], "several sizes in GB, each prepared from a corpus of its own, e.g. 0.25,0.5,1.0 (instead of --gb)")
    workers: int = option(0, "threads: prepare's --workers and encode_ordinary_batch's num_threads (0: one per CPU core)", bounds=">=0")
    tokenizer_train_bytes: int = option(100_000_000, "prepare's --tokenizer_train_bytes: text the BPE tokenizer is trained on", bounds=">0")
    vocab_size: int = option(4096, "prepare's --vocab_size", bounds="[264, 65536]")
    shard_tokens: int = option(100_000_000, "prepare's --shard_tokens", bounds=">=1")
    tiktoken_sample_mb: float = option(200.0, "MB of the corpus (its first files) that tiktoken's encode_ordinary_batch is timed on", bounds=">0")
    work_dir: str = option("prepared", "where the temporary corpus and prepared folder go")
    keep: bool = option(False, "keep the corpus and prepare's output (their folder is printed)")


def make_corpus(folder, size_bytes):
    """Write copies of the standard library's files under folder/copyNNNN/ until they hold size_bytes; (bytes, files)."""
    sources = [(f.key, f.path.read_text(encoding="utf-8", errors="replace")) for f in builtin_corpus_files()]
    written, files, copy = 0, 0, 0
    while written < size_bytes:
        renames = [(name, f"{name}_{_tag(copy)}") for name in RENAMED] if copy else []
        for key, text in sources:
            if copy:
                blocks = text.split("\n\n")
                random.Random(f"{copy}:{key}").shuffle(blocks)
                text = "\n\n".join(blocks)
                for name, renamed in renames:
                    text = text.replace(name, renamed)  # inside longer names too: str.replace is 20x faster than a \b regex
            data = text.encode("utf-8")[:size_bytes - written].decode("utf-8", "ignore").encode("utf-8")  # the last file cut whole characters
            path = folder / f"copy{copy:04d}" / f"{key}.txt"  # not .py: nothing that looks for the checkout's code should find these
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written += len(data)
            files += 1
            if written >= size_bytes:
                break
        copy += 1
    return written, files


def _tag(copy):
    """A short name for a copy: a, b, ..., z, ba, bb, ..."""
    tag = ""
    while True:
        tag = "abcdefghijklmnopqrstuvwxyz"[copy % 26] + tag
        copy //= 26
        if not copy:
            return tag


def check_space(folder, size_bytes):
    free = shutil.disk_usage(folder).free
    if free < SPACE_FACTOR * size_bytes:
        raise UsageError(f"{folder} has {free / 1e9:.1f} GB free, and a {size_bytes / 1e9:g} GB corpus with its shards needs about "
                         f"{SPACE_FACTOR * size_bytes / 1e9:.1f} GB; free some space or give another --work_dir")


def run_prepare(corpus, out, cfg):
    """Run data/prepare.py on the corpus, echoing its output; (its stdout, wall seconds)."""
    command = [sys.executable, str(PREPARE), str(corpus), f"--out_dir={out}", f"--workers={cfg.workers}", f"--vocab_size={cfg.vocab_size}",
               f"--tokenizer_train_bytes={cfg.tokenizer_train_bytes}", f"--shard_tokens={cfg.shard_tokens}"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, encoding="utf-8", env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    for line in process.stdout:  # stderr (its progress bar, its errors) goes straight to ours
        print(f"  | {line}", end="", flush=True)
        lines.append(line)
    process.wait()
    if process.returncode:
        raise UsageError(f"data/prepare.py failed (exit status {process.returncode}); its output is above")
    return "".join(lines), time.perf_counter() - started


def figure(output, pattern, what):
    found = re.search(pattern, output)
    if not found:
        raise UsageError(f"data/prepare.py printed no {what} line (looked for {pattern!r})")
    return float(found.group(1).replace(",", ""))


def tiktoken_speed(corpus, tokenizer, sample_bytes, workers):
    """MB/s of tiktoken's encode_ordinary_batch over the corpus's first files (sorted, as prepare reads them), up to
    sample_bytes; only the encoding is timed. (MB/s, MB encoded)."""
    encoding = Tokenizer.from_json(tokenizer.read_text(encoding="utf-8")).encoding
    paths = sorted(p for p in corpus.rglob("*") if p.is_file())
    done, seconds, batch, batch_bytes = 0, 0.0, [], 0
    for i, path in enumerate(paths):
        text = path.read_text(encoding="utf-8")
        batch.append(text)
        batch_bytes += len(text.encode("utf-8"))
        if batch_bytes >= TIKTOKEN_BATCH or done + batch_bytes >= sample_bytes or i == len(paths) - 1:
            started = time.perf_counter()
            encoding.encode_ordinary_batch(batch, num_threads=workers)
            seconds += time.perf_counter() - started
            done += batch_bytes
            batch, batch_bytes = [], 0
            if done >= sample_bytes:
                break
    return done / 1e6 / seconds, done / 1e6


def measure(cfg, gb):
    """Make a corpus of `gb` GB, prepare it, time tiktoken on it; the figures, as a dict."""
    size = int(gb * 1e9)
    root = Path(cfg.work_dir)
    root.mkdir(parents=True, exist_ok=True)
    check_space(root, size)
    folder = Path(tempfile.mkdtemp(prefix="bench-prepare-", dir=root))
    try:
        started = time.perf_counter()
        written, files = make_corpus(folder / "corpus", size)
        print(f"corpus: {written / 1e6:,.1f} MB in {files:,} files, made in {time.perf_counter() - started:.1f} s under {folder}", flush=True)
        output, seconds = run_prepare(folder / "corpus", folder / "out", cfg)
        result = {
            "gb": gb, "seconds": seconds,
            "bpe_s": figure(output, r"trained in ([\d.]+) s", "training"),
            "bpe_mb": figure(output, r"trained in [\d.]+ s on ([\d,.]+) MB", "training"),
            "bpe_peak_mb": figure(output, r"peak memory so far ([\d,.]+) MB", "training memory"),
            "mb_s": figure(output, r"tokenized .*\(([\d.]+) MB/s\)", "tokenizing"),
            "peak_rss_mb": figure(output, r"tokenized .*; peak memory ([\d,.]+) MB", "tokenizing"),
        }
        result["tiktoken_mb_s"], result["tiktoken_mb"] = tiktoken_speed(folder / "corpus", folder / "out" / "tokenizer.json",
                                                                        cfg.tiktoken_sample_mb * 1e6, cfg.workers)
        result["ratio"] = result["mb_s"] / result["tiktoken_mb_s"]
    finally:
        if cfg.keep:
            print(f"kept: the corpus and prepare's output are in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"{gb:g} GB: prepare {result['seconds']:.1f} s in all | BPE training {result['bpe_s']:.1f} s on {result['bpe_mb']:,.1f} MB, "
          f"peak memory by then {result['bpe_peak_mb']:,.0f} MB | tokenizing {result['mb_s']:.2f} MB/s | "
          f"peak memory {result['peak_rss_mb']:,.0f} MB ({result['peak_rss_mb'] / (written / 1e6):.2f}x the corpus)")
    print(f"{gb:g} GB: tiktoken encode_ordinary_batch {result['tiktoken_mb_s']:.2f} MB/s on {result['tiktoken_mb']:,.1f} MB, "
          f"{cfg.workers} thread{'s' * (cfg.workers != 1)}: prepare tokenizes at {result['ratio']:.2f}x", flush=True)
    return result


def main():
    cfg = parse_options(BenchConfig, description=__doc__, positional=None)
    sizes = cfg.sizes or [cfg.gb]
    if any(not 0 < gb < 1e6 for gb in sizes):
        raise UsageError(f"--sizes={','.join(f'{gb:g}' for gb in sizes)}: every size must be a positive number of GB")
    cfg.workers = cfg.workers or os.cpu_count() or 1  # the reproduce line names the threads this machine used
    print(describe_machine("cpu"))
    results = [measure(cfg, gb) for gb in sizes]
    if len(results) > 1:
        print("peak memory by size: " + ", ".join(f"{r['gb']:g} GB {r['peak_rss_mb']:,.0f} MB" for r in results))
    print(f"reproduce: {reproduce_command('bench/prepare.py', cfg, always=('workers',) if cfg.sizes else ('gb', 'workers'))}")
    for r in results:
        print(f"prepare: gb={r['gb']:g} mb_s={r['mb_s']:.2f} tiktoken_ratio={r['ratio']:.2f} peak_rss_mb={r['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    run_cli(main)
