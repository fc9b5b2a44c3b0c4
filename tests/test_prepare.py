"""prepare(): corpora from files, folders, globs, JSONL and local Hugging Face datasets into verified token shards."""
import hashlib
import json
import os
import re
import tracemalloc

import numpy as np
import pytest

from gptkit import tokenizing
from gptkit.errors import UsageError
from gptkit.preparation import CappedText, PrepareConfig, default_data_dir, prepare
from gptkit.shards import META_FILE, TOKENIZER_FILE, ShardWriter, load_split, read_meta
from gptkit.sources import expand_inputs, file_documents
from gptkit.tokenizer import Tokenizer
from helpers import run_script

EOT = 256  # the bytes tokenizer's <|endoftext|>


def run_prepare(out, *inputs, **options):
    options.setdefault("tokenizer", "bytes")
    cfg = PrepareConfig(inputs=[str(i) for i in inputs], out_dir=str(out), **options)
    assert prepare(cfg) == out
    return read_meta(out)


def tokens(out, split):
    return np.concatenate(load_split(out, split)).tolist()


def as_bytes_ids(*docs):
    """What the bytes tokenizer stores for these documents: each one's UTF-8 bytes, then <|endoftext|>."""
    ids = []
    for doc in docs:
        ids += list(doc.encode("utf-8")) + [EOT]
    return ids


def documents(ids, tok):
    """Split a token stream at <|endoftext|> and decode each document."""
    docs, current = [], []
    for i in ids:
        if i == tok.eot_id:
            docs.append(tok.decode(current))
            current = []
        else:
            current.append(i)
    assert not current, "the stream must end with <|endoftext|>"
    return docs


@pytest.fixture
def docs_folder(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha text\n", encoding="utf-8")
    (folder / "b.md").write_text("# beta 你好\n", encoding="utf-8")
    (folder / "c.py").write_text("print('gamma 🙂')\n", encoding="utf-8")
    (folder / "sub" / "d.txt").write_text("delta\n", encoding="utf-8")
    (folder / "ignored.csv").write_text("not,a,document\n", encoding="utf-8")
    (folder / "image.bin").write_bytes(b"\x00\x01\x02")
    return folder


def test_folder_of_text_files_is_split_into_documents(tmp_path, docs_folder):
    # Held out: a document whose key (its path under the folder) hashes below the fraction. On every machine:
    # a.txt 0.81, b.md 0.73, c.py 0.86, sub/d.txt 0.52.
    meta = run_prepare(tmp_path / "out", docs_folder, val_fraction=0.75)
    assert tokens(tmp_path / "out", "train") == as_bytes_ids("alpha text\n", "print('gamma 🙂')\n")
    assert tokens(tmp_path / "out", "val") == as_bytes_ids("# beta 你好\n", "delta\n")
    assert meta["splits"]["train"]["documents"] == 2
    assert meta["splits"]["val"]["documents"] == 2


def test_glob_selects_matching_files_only(tmp_path, docs_folder):
    (docs_folder / "e.md").write_text("epsilon\n", encoding="utf-8")
    run_prepare(tmp_path / "out", docs_folder / "*.md", val_fraction=0.7)  # keys b.md 0.73, e.md 0.64
    assert tokens(tmp_path / "out", "train") == as_bytes_ids("# beta 你好\n")
    assert tokens(tmp_path / "out", "val") == as_bytes_ids("epsilon\n")


def test_a_folder_is_read_in_sorted_path_order_without_being_listed(tmp_path):
    """A folder of many files costs memory for one folder's entries at a time, not for every file of the tree; the
    order (and so the shards) is what sorting every path would give."""
    root = tmp_path / "corpus"
    for rel in ["a/b.txt", "a.txt", "a-b/c.md", "a/b/c.py", "a/b.txt.bak", "A/x.txt", "a b/q.txt", ".hidden/h.txt", "é/f.txt"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("t\n", encoding="utf-8")
    for i in range(2000):
        (root / f"many/part{i // 100:02d}" / f"doc{i}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / f"many/part{i // 100:02d}" / f"doc{i}.txt").write_text("t\n", encoding="utf-8")
    tracemalloc.start()
    try:
        files = expand_inputs([str(root)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200_000  # a listing of the 2,008 files would take 1.2 MB
    assert (files.count, files.size, files.jsonl) == (2008, 2008 * 2, False)
    expected = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".txt", ".md", ".py")]
    assert [f.key for f in files] == [f.key for f in files] == expected  # the same order at every pass


def test_jsonl_gives_one_document_per_line(tmp_path):
    records = [{"text": f"record {i} ünïcode", "id": i} for i in range(4)]
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in records[:2]] + [""] + [json.dumps(r) for r in records[2:]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run_prepare(tmp_path / "out", path, val_fraction=0.5)  # keys data.jsonl:LINE: line 1 0.33, 2 0.61, 4 0.74, 5 0.75
    assert tokens(tmp_path / "out", "train") == as_bytes_ids("record 1 ünïcode", "record 2 ünïcode", "record 3 ünïcode")
    assert tokens(tmp_path / "out", "val") == as_bytes_ids("record 0 ünïcode")


def test_jsonl_with_another_text_field(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"doc {i}"}) for i in range(4)) + "\n", encoding="utf-8")
    run_prepare(tmp_path / "out", path, val_fraction=0.5, text_field="body")  # line 1 hashes to 0.33, the others above 0.5
    assert tokens(tmp_path / "out", "train") == as_bytes_ids("doc 1", "doc 2", "doc 3")
    assert tokens(tmp_path / "out", "val") == as_bytes_ids("doc 0")


def test_jsonl_missing_the_text_field_names_the_option(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine"}\n{"content": "no text field here"}\n', encoding="utf-8")
    with pytest.raises(UsageError, match="--text_field") as info:
        run_prepare(tmp_path / "out", path, val_fraction=0.5)
    assert "data.jsonl:2" in str(info.value)


def test_jsonl_with_a_broken_line_names_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(UsageError, match=r"data.jsonl:2 is not valid JSON"):
        run_prepare(tmp_path / "out", path, val_fraction=0.5)


def test_jsonl_is_read_a_line_at_a_time(tmp_path):
    """A corpus of a few JSONL files of gigabytes: memory holds a line, not the file; and a line ends at \\n only."""
    path = tmp_path / "big.jsonl"
    first = json.dumps({"text": "a\u2028b\x85c"}, ensure_ascii=False)  # separators str.splitlines would cut the record at
    path.write_text(first + "\n" + (json.dumps({"text": "x" * 10_000}) + "\n") * 500, encoding="utf-8")  # 5 MB
    tracemalloc.start()
    try:
        docs = file_documents(path)
        assert next(docs) == ("big.jsonl:1", "a\u2028b\x85c")
        assert next(docs) == ("big.jsonl:2", "x" * 10_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_single_file_holds_out_its_tail_as_validation(tmp_path):
    lines = [f"line {i:03d} of the only document" for i in range(200)]
    text = "\n".join(lines) + "\n"
    path = tmp_path / "one.txt"
    path.write_text(text, encoding="utf-8")
    meta = run_prepare(tmp_path / "out", path, val_fraction=0.1)
    train, val = tokens(tmp_path / "out", "train"), tokens(tmp_path / "out", "val")
    assert train[-1] == EOT and val[-1] == EOT
    train_text, val_text = bytes(train[:-1]).decode(), bytes(val[:-1]).decode()
    assert train_text + val_text == text  # nothing lost, nothing duplicated
    assert train_text.endswith("\n") and val_text.startswith("line ")  # cut at a line break
    assert 0.07 < len(val_text) / len(text) < 0.13
    assert meta["splits"]["val"]["documents"] == 1


def test_val_file_is_the_validation_split(tmp_path, corpus_file):
    val = tmp_path / "held_out.txt"
    val.write_text("validation only\n", encoding="utf-8")
    run_prepare(tmp_path / "out", corpus_file, val_file=str(val))
    assert tokens(tmp_path / "out", "train") == as_bytes_ids(corpus_file.read_text(encoding="utf-8"))
    assert tokens(tmp_path / "out", "val") == as_bytes_ids("validation only\n")


def test_missing_val_file_is_a_usage_error(tmp_path, corpus_file):
    with pytest.raises(UsageError, match="--val_file"):
        run_prepare(tmp_path / "out", corpus_file, val_file=str(tmp_path / "nope.txt"))


def test_missing_input_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        run_prepare(tmp_path / "out", tmp_path / "no_such_file.txt")


def test_empty_file_is_a_usage_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UsageError, match="empty"):
        run_prepare(tmp_path / "out", tmp_path / "empty.txt")
    assert not (tmp_path / "out" / META_FILE).exists()


def test_folder_without_text_files_is_a_usage_error(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "data.csv").write_text("a,b\n")
    with pytest.raises(UsageError, match="holds no"):
        run_prepare(tmp_path / "out", tmp_path / "corpus")


def test_glob_matching_nothing_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="holds no"):
        run_prepare(tmp_path / "out", tmp_path / "*.md")


def test_zero_val_fraction_without_val_file_is_a_usage_error(tmp_path, corpus_file):
    with pytest.raises(UsageError, match="--val_fraction"):
        run_prepare(tmp_path / "out", corpus_file, val_fraction=0.0)


def test_max_documents_stops_early(tmp_path, docs_folder):
    meta = run_prepare(tmp_path / "out", docs_folder, val_fraction=0.75, max_documents=2)  # a.txt for training, b.md held out
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 2


def test_meta_describes_the_prepared_data(tmp_path, corpus_file):
    out = tmp_path / "out"
    meta = run_prepare(out, corpus_file, val_fraction=0.1, shard_tokens=5000)
    assert meta["tokenizer"] == "bytes"
    assert meta["vocab_size"] == 264
    assert meta["dtype"] == "uint16"
    for split in ("train", "val"):
        info = meta["splits"][split]
        assert info["tokens"] == sum(s["tokens"] for s in info["shards"]) == len(tokens(out, split))
        for shard in info["shards"]:
            assert shard["sha256"] == hashlib.sha256((out / shard["file"]).read_bytes()).hexdigest()
    assert len(meta["splits"]["train"]["shards"]) > 1
    assert meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"] == corpus_file.stat().st_size
    assert meta["bytes_per_token_val"] == pytest.approx(1.0)  # one byte per token, separators excluded
    saved = Tokenizer.from_json((out / TOKENIZER_FILE).read_text())
    assert saved.kind == "bytes" and saved.n_vocab == 264


def test_bpe_preparation_round_trips_the_text(tmp_path, corpus_file):
    out = tmp_path / "out"
    meta = run_prepare(out, corpus_file, tokenizer="bpe", vocab_size=300, val_fraction=0.1)
    tok = Tokenizer.from_json((out / TOKENIZER_FILE).read_text())
    assert meta["tokenizer"] == "bpe" and meta["vocab_size"] == tok.n_vocab == 300
    train_docs, val_docs = documents(tokens(out, "train"), tok), documents(tokens(out, "val"), tok)
    assert "".join(train_docs + val_docs) == corpus_file.read_text(encoding="utf-8")
    assert meta["bytes_per_token_val"] > 1.5  # merges compress the text


def test_rerun_replaces_old_shards(tmp_path, corpus_file):
    out = tmp_path / "out"
    first = run_prepare(out, corpus_file, val_fraction=0.1, shard_tokens=1000)
    assert len(first["splits"]["train"]["shards"]) > 3
    small = tmp_path / "small.txt"
    small.write_text("a much smaller corpus\nwith two lines\n", encoding="utf-8")
    second = run_prepare(out, small, val_fraction=0.3)
    listed = {s["file"] for split in second["splits"].values() for s in split["shards"]}
    assert {p.name for p in out.glob("*.bin")} == listed == {"train_00000.bin", "val_00000.bin"}
    assert bytes(tokens(out, "train")[:-1] + tokens(out, "val")[:-1]).decode() == small.read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def interrupted_contents(out):
    return sorted(p.name for p in out.iterdir())


@pytest.fixture
def records_file(tmp_path, corpus_text):
    """A JSONL corpus of 60 documents of a few hundred characters."""
    lines = corpus_text.splitlines(keepends=True)
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps({"text": "".join(lines[i:i + 10])}) + "\n" for i in range(0, 600, 10)), encoding="utf-8")
    return path


def test_ctrl_c_while_tokenizing_leaves_no_meta_no_half_shard_and_a_rerun_completes(tmp_path, records_file, monkeypatch):
    out = tmp_path / "out"
    complete = run_prepare(out, records_file, val_fraction=0.1, shard_tokens=1000)
    monkeypatch.setattr(tokenizing, "BATCH_CHARS", 500)  # many batches, so the run stops part-way
    add, calls = ShardWriter.add, []

    def add_then_ctrl_c(self, ids):
        add(self, ids)
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(ShardWriter, "add", add_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(out, records_file, val_fraction=0.1, shard_tokens=1000)
    assert not (out / META_FILE).exists()  # the old meta.json went first: the folder no longer looks complete
    assert not [name for name in interrupted_contents(out) if name.startswith(".")]  # the shard being written was dropped
    monkeypatch.setattr(ShardWriter, "add", add)
    assert run_prepare(out, records_file, val_fraction=0.1, shard_tokens=1000) == complete
    load_split(out, "train")  # every shard matches its checksum


KILL_AT_THE_THIRD_WRITE = """
import os, signal, sys
from gptkit import shards, tokenizing
tokenizing.BATCH_CHARS = 500
add, calls = shards.ShardWriter.add, []
def add_then_die(self, ids):
    add(self, ids)
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
shards.ShardWriter.add = add_then_die
from data.prepare import cli
cli()
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_killed_while_tokenizing_leaves_no_meta_and_a_rerun_completes(tmp_path, records_file):
    out = tmp_path / "out"
    complete = run_prepare(out, records_file, val_fraction=0.1, shard_tokens=1000)
    result = run_script("-c", KILL_AT_THE_THIRD_WRITE, records_file, "--tokenizer=bytes", f"--out_dir={out}", "--val_fraction=0.1",
                        "--shard_tokens=1000", "--workers=2")
    assert result.returncode == -9, result.stderr
    assert not (out / META_FILE).exists()
    assert [name for name in interrupted_contents(out) if name.startswith(".")]  # killed mid-shard: its temporary file is left...
    assert run_prepare(out, records_file, val_fraction=0.1, shard_tokens=1000) == complete
    assert not [name for name in interrupted_contents(out) if name.startswith(".")]  # ...and the rerun removes it
    load_split(out, "train")


def test_bpe_training_text_is_capped_in_utf8_bytes_at_a_line_break():
    texts = iter(["ab\n" * 10, "你好\n" * 10, "never read"])
    sample = CappedText(texts, 40)
    assert list(sample) == ["ab\n" * 10, "你好\n"]  # 30 bytes, then whole lines of 7 bytes while they fit in the 10 left
    assert sample.used == 37
    assert next(texts) == "never read"  # the corpus is read no further
    one_big_document = CappedText(iter(["x" * 1000]), 100)
    assert list(one_big_document) == ["x" * 100] and one_big_document.used == 100  # no line break: cut anywhere


def test_local_hugging_face_dataset_offline(tmp_path):
    folder = tmp_path / "hf_dataset"
    folder.mkdir()
    rows = [{"text": f"hf document {i} 你好", "label": i} for i in range(6)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    cfg = PrepareConfig(dataset=str(folder), out_dir=str(out), tokenizer="bytes", val_fraction=0.5)
    prepare(cfg)
    # a record's key is its index: 0 0.71, 1 0.21, 2 0.85, 3 0.47, 4 0.11, 5 0.67
    assert tokens(out, "train") == as_bytes_ids(*(rows[i]["text"] for i in (0, 2, 5)))
    assert tokens(out, "val") == as_bytes_ids(*(rows[i]["text"] for i in (1, 3, 4)))
    assert "dataset" in read_meta(out)["source"]

    cfg = PrepareConfig(dataset=str(folder), out_dir=str(tmp_path / "out2"), tokenizer="bytes", val_fraction=0.5, text_field="content")
    with pytest.raises(UsageError, match="--text_field") as info:
        prepare(cfg)
    assert "label" in str(info.value)  # lists the columns it does have


def test_gpt2_tokenizer_offline_is_a_usage_error(tmp_path, corpus_file, monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(UsageError, match="TIKTOKEN_CACHE_DIR"):
        run_prepare(tmp_path / "out", corpus_file, tokenizer="gpt2")


def test_default_data_dir_tells_sources_and_tokenizers_apart(tmp_path):
    base = dict(inputs=[str(tmp_path / "a.txt")], tokenizer="bpe", vocab_size=4096)
    a = default_data_dir(PrepareConfig(**base))
    assert a == default_data_dir(PrepareConfig(**base))
    assert a != default_data_dir(PrepareConfig(**{**base, "vocab_size": 8192}))
    assert a != default_data_dir(PrepareConfig(**{**base, "tokenizer": "bytes"}))
    assert a != default_data_dir(PrepareConfig(**{**base, "inputs": [str(tmp_path / "b" / "a.txt")]}))
    assert a != default_data_dir(PrepareConfig(**{**base, "val_fraction": 0.05}))


def test_prepare_script_help():
    result = run_script("data/prepare.py", "--help")
    assert result.returncode == 0
    for name in ("--tokenizer", "--val_file", "--dataset", "--text_field", "--out_dir", "--shard_tokens"):
        assert name in result.stdout


def test_prepare_script_end_to_end(tmp_path, corpus_file):
    out = tmp_path / "prepared"
    result = run_script("data/prepare.py", corpus_file, "--tokenizer=bytes", f"--out_dir={out}", "--val_fraction=0.1")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    meta = read_meta(out)
    assert meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"] == corpus_file.stat().st_size + 2
    assert "train:" in result.stdout and "val:" in result.stdout
    assert re.search(r"^tokenized [\d.]+ MB in [\d.]+ s \([\d.]+ MB/s\) on \d+ threads?; peak memory [\d,]+ MB$", result.stdout, re.M)


def test_prepare_script_missing_input_is_one_line(tmp_path):
    result = run_script("data/prepare.py", tmp_path / "missing.txt", "--tokenizer=bytes", f"--out_dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: ") and "does not exist" in result.stderr
