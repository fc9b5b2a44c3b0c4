"""Token shards: exact round trips through ShardWriter/meta/load_split, corruption detection, atomic writes."""
import errno
import hashlib
import os
import tracemalloc

import numpy as np
import pytest

from gptkit import files, shards
from gptkit.errors import UsageError
from gptkit.files import atomic_write
from gptkit.shards import META_FILE, ShardWriter, is_prepared, load_split, read_meta, token_dtype, write_meta


def write_split(folder, split, tokens, shard_tokens, vocab_size=300, chunk=37):
    """Write `tokens` through a ShardWriter in uneven chunks, then a meta.json describing the split."""
    dtype = token_dtype(vocab_size)
    writer = ShardWriter(folder, split, dtype, shard_tokens)
    for i in range(0, len(tokens), chunk):
        writer.add(tokens[i:i + chunk])
    shards = writer.close()
    meta = {"version": 1, "vocab_size": vocab_size, "dtype": np.dtype(dtype).name, "splits": {split: {"tokens": len(tokens), "shards": shards}}}
    write_meta(folder, meta)
    return shards


def test_writer_splits_into_shards_of_the_given_size(tmp_path):
    tokens = list(range(250))
    shards = write_split(tmp_path, "train", tokens, shard_tokens=100)
    assert [s["file"] for s in shards] == ["train_00000.bin", "train_00001.bin", "train_00002.bin"]
    assert [s["tokens"] for s in shards] == [100, 100, 50]
    for s in shards:
        data = (tmp_path / s["file"]).read_bytes()
        assert len(data) == s["tokens"] * 2  # uint16
        assert s["sha256"] == hashlib.sha256(data).hexdigest()


def test_exact_multiple_of_shard_size_leaves_no_empty_shard(tmp_path):
    shards = write_split(tmp_path, "train", list(range(200)), shard_tokens=100)
    assert [s["tokens"] for s in shards] == [100, 100]
    assert sorted(p.name for p in tmp_path.glob("*.bin")) == ["train_00000.bin", "train_00001.bin"]


def test_load_split_returns_exactly_the_tokens_written(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 300, size=1234).tolist()
    write_split(tmp_path, "train", tokens, shard_tokens=500)
    arrays = load_split(tmp_path, "train")
    assert [len(a) for a in arrays] == [500, 500, 234]
    assert np.concatenate(arrays).tolist() == tokens
    assert read_meta(tmp_path)["splits"]["train"]["tokens"] == 1234
    assert is_prepared(tmp_path)


@pytest.mark.parametrize("vocab_size, dtype", [(256, np.uint16), (50257, np.uint16), (65536, np.uint16), (65537, np.uint32), (200_000, np.uint32)])
def test_token_dtype(vocab_size, dtype):
    assert token_dtype(vocab_size) == dtype
    assert np.iinfo(token_dtype(vocab_size)).max >= vocab_size - 1  # every id fits


def test_large_vocabulary_ids_survive_in_uint32(tmp_path):
    tokens = [0, 65535, 65536, 70000, 199_999]
    write_split(tmp_path, "val", tokens, shard_tokens=3, vocab_size=200_000)
    assert read_meta(tmp_path)["dtype"] == "uint32"
    assert np.concatenate(load_split(tmp_path, "val")).tolist() == tokens


def test_flipped_byte_is_a_checksum_error(tmp_path):
    write_split(tmp_path, "train", list(range(100)), shard_tokens=64)
    shard = tmp_path / "train_00001.bin"
    data = bytearray(shard.read_bytes())
    data[5] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="checksum") as info:
        load_split(tmp_path, "train")
    assert "train_00001.bin" in str(info.value)
    assert "prepare the data again" in str(info.value)


def test_truncated_shard_is_a_usage_error(tmp_path):
    write_split(tmp_path, "train", list(range(100)), shard_tokens=64)
    shard = tmp_path / "train_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(UsageError, match="truncated"):
        load_split(tmp_path, "train", verify=False)  # caught by the size check even without checksums


def test_missing_shard_is_a_usage_error(tmp_path):
    write_split(tmp_path, "train", list(range(100)), shard_tokens=64)
    (tmp_path / "train_00001.bin").unlink()
    with pytest.raises(UsageError, match="missing"):
        load_split(tmp_path, "train")


def test_missing_meta_is_a_usage_error(tmp_path):
    ShardWriter(tmp_path, "train", np.uint16, 10).add(list(range(20)))
    assert not is_prepared(tmp_path)
    with pytest.raises(UsageError, match=META_FILE):
        load_split(tmp_path, "train")
    with pytest.raises(UsageError, match="prepare.py"):
        read_meta(tmp_path)


def test_invalid_meta_json_is_a_usage_error(tmp_path):
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        read_meta(tmp_path)


def test_split_without_tokens_is_a_usage_error(tmp_path):
    write_split(tmp_path, "train", list(range(10)), shard_tokens=64)
    with pytest.raises(UsageError, match="no 'val' tokens"):
        load_split(tmp_path, "val")


def test_atomic_write_replaces_the_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with atomic_write(path) as f:
        f.write(b"new contents")
    assert path.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_interrupted_write_keeps_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "train_00000.bin"
    path.write_bytes(b"old shard")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path) as f:
            f.write(b"half of the new")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old shard"
    assert [p.name for p in tmp_path.iterdir()] == ["train_00000.bin"]


def test_crash_before_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    write_meta(tmp_path, {"version": 1, "old": True})

    def crash(src, dst):
        raise OSError(errno.EIO, "simulated crash")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError):
        write_meta(tmp_path, {"version": 1, "old": False})
    monkeypatch.undo()
    assert read_meta(tmp_path) == {"version": 1, "old": True}
    assert [p.name for p in tmp_path.iterdir()] == [META_FILE]


def test_disk_full_is_a_usage_error_that_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(UsageError, match="out of disk space"):
        with atomic_write(path) as f:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_interrupted_shard_writer_leaves_no_partial_shard(tmp_path, monkeypatch):
    """A failure while a shard is being written leaves no file under the shard's name."""
    writer = ShardWriter(tmp_path, "train", np.uint16, 10)

    def crash(fd):
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(files.os, "fsync", crash)
    with pytest.raises(OSError):
        writer.add(list(range(15)))
    assert list(tmp_path.iterdir()) == []


def test_discard_drops_the_shard_being_written_and_keeps_the_finished_ones(tmp_path):
    writer = ShardWriter(tmp_path, "train", np.uint16, 10)
    writer.add(list(range(15)))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".train_00001.bin.tmp{os.getpid()}", "train_00000.bin"]
    writer.discard()
    assert [p.name for p in tmp_path.iterdir()] == ["train_00000.bin"]


def test_memory_does_not_grow_with_the_shard_size(tmp_path):
    """Ids stream to the shard's file as they come: a writer of 4-billion-token shards holds no shard-sized buffer."""
    tracemalloc.start()
    try:
        writer = ShardWriter(tmp_path, "train", np.uint32, 4_000_000_000)
        for start in range(0, 1_000_000, 100_000):
            writer.add(np.arange(start, start + 100_000, dtype=np.uint32))
        shards = writer.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000  # about one 0.4 MB batch, not 16 GB
    assert shards[0]["tokens"] == 1_000_000
    assert np.array_equal(np.fromfile(tmp_path / "train_00000.bin", dtype=np.uint32), np.arange(1_000_000))


def test_a_full_disk_while_streaming_a_shard_is_a_usage_error_that_leaves_no_file(tmp_path, monkeypatch):
    class FullDisk:
        def __init__(self, path, mode):
            self.file = open(path, mode)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    writer = ShardWriter(tmp_path, "train", np.uint16, 10)
    monkeypatch.setattr(shards, "open", FullDisk, raising=False)
    with pytest.raises(UsageError, match="out of disk space while writing .*train_00000.bin"):
        writer.add(list(range(5)))
    assert list(tmp_path.iterdir()) == []
