"""Token shards on disk: flat arrays of uint16 (or uint32) ids, described by a meta.json sidecar.

meta.json is written last, atomically, and lists every shard with its token count and sha256, so a folder
whose preparation was interrupted has no meta.json (or the old, still-matching one) and never looks complete.
"""
import hashlib
import json
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from gptkit.errors import UsageError
from gptkit.files import atomic_path, atomic_write, read_json_object

META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"


def token_dtype(vocab_size):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


class ShardWriter:
    """Writes token ids into fixed-size shards `{split}_{index:05d}.bin` as they come.

    Each shard streams into a temporary file beside its name, hashed on the way, and is fsynced and renamed once full
    (gptkit/files.py's atomic_path): memory does not grow with shard_tokens, and a crash at any moment leaves no half
    shard under a shard's name. discard() drops the shard being written, for a run that stops early.
    """

    def __init__(self, folder, split, dtype, shard_tokens):
        self.folder, self.split, self.dtype = Path(folder), split, np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.shards = []
        self._open = None  # the shard being written: (its ExitStack, file, sha256, tokens so far); None between shards

    def add(self, ids):
        ids = np.ascontiguousarray(ids, dtype=self.dtype)
        while len(ids):
            if self._open is None:
                self._start()
            stack, file, digest, filled = self._open
            part = ids[:self.shard_tokens - filled]  # a view: written and hashed without a copy
            try:
                file.write(part)
            except OSError as e:
                self._drop(e)  # raises what atomic_path makes of it: a full disk is one line that says so
                raise
            digest.update(part)
            self._open = (stack, file, digest, filled + len(part))
            ids = ids[len(part):]
            if filled + len(part) == self.shard_tokens:
                self._finish()

    def close(self):
        """Finish the last shard; returns every shard as {file, tokens, sha256}."""
        if self._open is not None:
            self._finish()
        return self.shards

    def discard(self):
        """Delete the shard being written (its temporary file): nothing appears under its name."""
        self._drop(_Discarded())

    def _drop(self, error):
        if self._open is not None:
            stack = self._open[0]
            self._open = None
            stack.__exit__(type(error), error, error.__traceback__)  # atomic_path removes the temporary file instead of renaming it

    def _start(self):
        stack = ExitStack()
        tmp = stack.enter_context(atomic_path(self.folder / self._name()))
        self._open = (stack, stack.enter_context(open(tmp, "wb")), hashlib.sha256(), 0)

    def _finish(self):
        stack, _, digest, filled = self._open
        self._open = None
        stack.close()  # closes the file, then atomic_path fsyncs it and renames it under the shard's name
        self.shards.append({"file": self._name(), "tokens": filled, "sha256": digest.hexdigest()})

    def _name(self):
        return f"{self.split}_{len(self.shards):05d}.bin"  # of the shard being written: the one after those finished


class _Discarded(Exception):
    """Raised into a shard's atomic_path by discard(), to make it drop the temporary file."""


def write_meta(folder, meta):
    with atomic_write(Path(folder) / META_FILE, "w") as f:
        json.dump(meta, f, indent=1)


def read_meta(folder):
    """meta.json of a prepared folder: a JSON object (load_split checks the fields it reads)."""
    path = Path(folder) / META_FILE
    if Path(folder).is_file():
        raise UsageError(f"{folder} is a file; give the folder data/prepare.py wrote (it holds {META_FILE} and the shards)")
    if not path.is_file():
        raise UsageError(f"{folder} holds no prepared data ({META_FILE} missing); run `python data/prepare.py --out_dir={folder} ...` first")
    return read_json_object(path, "the file is damaged, prepare the data again")


def _check_meta(meta, path):
    def expect(ok, field, wanted):
        if not ok:
            raise UsageError(f"{path}: {field} should be {wanted}; the file is damaged, prepare the data again")

    expect(isinstance(meta.get("tokenizer", ""), str), "tokenizer", "a string")
    expect(isinstance(meta.get("vocab_size"), int) and not isinstance(meta["vocab_size"], bool) and meta["vocab_size"] > 0, "vocab_size",
           "a positive integer")
    expect(meta.get("dtype") in ("uint16", "uint32"), "dtype", "uint16 or uint32")
    expect(isinstance(meta.get("splits"), dict), "splits", "an object of splits")
    for name, split in meta["splits"].items():
        expect(isinstance(split, dict) and isinstance(split.get("tokens"), int) and isinstance(split.get("shards"), list),
               f"splits.{name}", "an object with tokens (an integer) and shards (a list)")
        for i, shard in enumerate(split["shards"]):
            expect(isinstance(shard, dict) and isinstance(shard.get("file"), str) and "/" not in shard["file"]
                   and isinstance(shard.get("tokens"), int) and shard["tokens"] >= 0 and isinstance(shard.get("sha256"), str),
                   f"splits.{name}.shards[{i}]", "an object with file (a name in the folder), tokens (an integer) and sha256")


def is_prepared(folder):
    return (Path(folder) / META_FILE).is_file()


def load_split(folder, split, verify=True):
    """Memory-map every shard of a split, checking its length and checksum against meta.json."""
    folder = Path(folder)
    meta = read_meta(folder)
    _check_meta(meta, folder / META_FILE)
    dtype = np.dtype(meta["dtype"])
    if split not in meta["splits"] or not meta["splits"][split]["shards"]:
        raise UsageError(f"{folder} has no {split!r} tokens; prepare the data again with a larger corpus or --val_fraction")
    arrays = []
    for shard in meta["splits"][split]["shards"]:
        path = folder / shard["file"]
        fix = f"prepare the data again (delete {folder} or run data/prepare.py --out_dir={folder})"
        if not path.is_file():
            raise UsageError(f"shard {path} is missing; {fix}")
        if path.stat().st_size != shard["tokens"] * dtype.itemsize:
            raise UsageError(f"shard {path} has {path.stat().st_size} bytes, expected {shard['tokens'] * dtype.itemsize} (truncated?); {fix}")
        if verify and _sha256(path) != shard["sha256"]:
            raise UsageError(f"shard {path} is corrupted (checksum mismatch); {fix}")
        array = np.memmap(path, dtype=dtype, mode="r")
        largest = int(array.max()) if verify and len(array) else 0
        if largest >= meta["vocab_size"]:
            raise UsageError(f"shard {path} holds token id {largest}, beyond the tokenizer's {meta['vocab_size']} ids; {fix}")
        arrays.append(array)
    return arrays


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()
