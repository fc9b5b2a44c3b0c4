"""The validation split: documents held out by a hash of their keys (the same on every machine and in any order), enough
of them to measure, the tail of a corpus too small for that, and a built-in corpus without generated tables."""
import random

import numpy as np
import pytest

from gptkit import preparation
from gptkit.preparation import PrepareConfig, corpus_documents, default_data_dir, held_out_fraction, is_held_out, labelled_documents, prepare, split_documents
from gptkit.shards import load_split
from gptkit.sources import builtin_corpus_files

EOT = 256  # the bytes tokenizer's <|endoftext|>


def prepared_texts(out, split):
    """The documents of a split prepared with the bytes tokenizer, each ended by <|endoftext|>."""
    texts, doc = [], []
    for i in np.concatenate(load_split(out, split)).tolist():
        if i == EOT:
            texts.append(bytes(doc).decode())
            doc = []
        else:
            doc.append(i)
    return texts


def held_out(labelled):
    return sorted(text for split, text in labelled if split == "val")


def test_the_same_documents_are_held_out_in_any_order():
    docs = [(f"doc{i:03d}.txt", f"document {i}\n") for i in range(200)]
    first = held_out(split_documents(iter(docs), 0.1, 0.1))
    shuffled = random.Random(0).sample(docs, len(docs))
    assert held_out(split_documents(iter(shuffled), 0.1, 0.1)) == first
    assert held_out(split_documents(iter(docs), 0.1, 0.1)) == first
    assert 10 <= len(first) <= 30


def test_the_held_out_share_follows_the_fraction_and_a_larger_one_adds_documents():
    keys = [f"lib/module{i}.py" for i in range(20_000)]
    small = {k for k in keys if is_held_out(k, 0.01)}
    large = {k for k in keys if is_held_out(k, 0.05)}
    assert 0.008 < len(small) / len(keys) < 0.012
    assert 0.045 < len(large) / len(keys) < 0.055
    assert small < large


def test_a_folder_moved_or_renamed_keeps_its_split(tmp_path, capsys):
    texts = {f"part{i // 10}/doc{i}.txt": f"document number {i}\n" for i in range(60)}
    outs = []
    for root in (tmp_path / "here" / "corpus", tmp_path / "elsewhere" / "renamed"):
        for key, text in texts.items():
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / key).write_text(text, encoding="utf-8")
        outs.append(tmp_path / f"out{len(outs)}")
        prepare(PrepareConfig(inputs=[str(root)], tokenizer="bytes", out_dir=str(outs[-1])))
    # 60 documents at the default 1% would expect 0.6 held out: the share is raised to the 10% cap, and said so
    assert "holding out 10.0% of the 60 documents for validation" in capsys.readouterr().out
    expected = sorted(text for key, text in texts.items() if is_held_out(key, 0.1))
    assert len(expected) == 8  # the keys' hashes, the same on every machine
    for out in outs:
        assert sorted(prepared_texts(out, "val")) == expected
        assert len(prepared_texts(out, "train")) == 60 - len(expected)


@pytest.mark.parametrize("val_fraction, count, expected", [
    (0.01, 661, 32 / 661),  # raised until 32 documents are expected
    (0.01, 100, 0.1),  # ...but never above 10%
    (0.01, 5000, 0.01),  # enough already
    (0.3, 100, 0.3),  # a larger fraction is kept
    (0.01, None, 0.01),  # not counted up front (.jsonl records, a dataset)
    (0.01, 5, 0.0),  # even 10% expects less than one document: the tail of the last one instead
    (0.1, 1, 0.0),
])
def test_the_fraction_is_raised_to_expect_32_documents_when_they_are_counted(val_fraction, count, expected):
    fraction, note = held_out_fraction(val_fraction, count)
    assert fraction == pytest.approx(expected)
    assert (note is not None) == (fraction > val_fraction)


def test_jsonl_records_are_not_counted_up_front(tmp_path):
    (tmp_path / "a.txt").write_text("text\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n', encoding="utf-8")
    assert corpus_documents(PrepareConfig(inputs=[str(tmp_path / "a.txt")]))[2] == 1
    _, _, count, _ = corpus_documents(PrepareConfig(inputs=[str(tmp_path)]))
    assert count is None


def test_one_file_holds_out_its_tail_sized_by_val_fraction(tmp_path):
    text = "".join(f"line {i:04d}\n" for i in range(2000))
    path = tmp_path / "one.txt"  # its key hashes to 0.05, under the raised 10%: a lone file is still cut, never held out whole
    path.write_text(text, encoding="utf-8")
    labelled = list(labelled_documents(PrepareConfig(inputs=[str(path)], val_fraction=0.01))[0])
    assert [split for split, _ in labelled] == ["train", "val"]
    train, val = (t for _, t in labelled)
    assert train + val == text and val.startswith("line ")
    assert len(val) == 200  # 1% of the text, cut at a line break


def test_documents_all_held_out_still_leave_training_text():
    docs = [("a", "first\n" * 10), ("b", "second\n" * 10)]  # a fraction near 1 holds out both
    labelled = list(split_documents(iter(docs), 0.9999, 0.25))
    assert [split for split, _ in labelled] == ["val", "train", "val"]
    assert labelled[1][1] + labelled[2][1] == docs[1][1]


def test_shakespeare_keeps_the_last_tenth_as_validation(tmp_path, shakespeare_text):
    path = tmp_path / "tinyshakespeare.txt"  # config/shakespeare.py's split: the last 10% of the text, from a line's start
    path.write_text(shakespeare_text, encoding="utf-8")
    (_, train), (_, val) = labelled_documents(PrepareConfig(inputs=[str(path)], val_fraction=0.1))[0]
    assert train + val == shakespeare_text and train.endswith("\n")
    assert 0.099 < len(val) / len(shakespeare_text) < 0.101


def test_builtin_corpus_leaves_out_generated_tables():
    files = builtin_corpus_files()
    keys = {f.key for f in files}
    assert {"os.py", "encodings/__init__.py", "encodings/utf_8.py", "pydoc_data/topics.py"} <= keys
    assert not keys & {"encodings/cp1252.py", "encodings/mac_roman.py", "encodings/iso8859_15.py", "encodings/koi8_r.py",
                       "html/entities.py", "stringprep.py"}
    for f in files:
        if f.key.startswith("encodings/"):
            text = f.path.read_text(encoding="utf-8")
            assert "decoding_table" not in text and "decoding_map" not in text, f.key  # what charmap codecs decode with


def test_builtin_corpus_validation_is_large_enough_to_measure():
    files = builtin_corpus_files()
    fraction, note = held_out_fraction(PrepareConfig().val_fraction, len(files))
    assert note and f"of the {len(files)} documents" in note
    held = [f for f in files if is_held_out(f.key, fraction)]
    sizes = {f.key: f.path.stat().st_size for f in files}
    assert len(held) >= 16  # about 32 expected
    assert sum(sizes[f.key] for f in held) > 0.01 * sum(sizes.values())


def test_a_new_preparation_version_gets_a_new_default_folder(monkeypatch):
    before = default_data_dir(PrepareConfig())
    monkeypatch.setattr(preparation, "PREPARATION_VERSION", preparation.PREPARATION_VERSION + 1)
    assert default_data_dir(PrepareConfig()) != before
