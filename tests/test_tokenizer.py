"""Tokenizers: lossless round trips in any script, reserved special tokens, serialisation, and clear errors."""
import pytest
import regex
import tiktoken
from hypothesis import given
from hypothesis import strategies as st

from gptkit import tokenizer
from gptkit.errors import UsageError
from gptkit.tokenizer import END_OF_TEXT, SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer, byte_tokenizer, gpt2_tokenizer, train_bpe_tokenizer, word_aligned_pieces
from helpers import SAMPLES


@pytest.fixture(scope="module")
def gpt2_tok():
    try:
        return gpt2_tokenizer()
    except UsageError as e:
        pytest.skip(f"GPT-2's encoding is not available offline: {str(e)[:80]}")


@pytest.fixture(params=["bytes", "bpe", "gpt2"])
def tok(request, bytes_tok, bpe_tok):
    if request.param == "bytes":
        return bytes_tok
    if request.param == "bpe":
        return bpe_tok
    return request.getfixturevalue("gpt2_tok")


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip_every_script(tok, name):
    text = SAMPLES[name]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


@given(text=st.text(max_size=200))
def test_bytes_tokenizer_round_trips_any_text(bytes_tok, text):
    ids = bytes_tok.encode(text)
    assert ids == list(text.encode("utf-8"))  # one id per UTF-8 byte, the byte's value
    assert bytes_tok.decode(ids) == text


@given(text=st.text(max_size=200))
def test_bpe_tokenizer_round_trips_any_text(bpe_tok, text):
    assert bpe_tok.decode(bpe_tok.encode(text)) == text


def test_bpe_tokenizer_compresses_its_training_text(bpe_tok, corpus_text):
    ids = bpe_tok.encode(corpus_text)
    assert len(ids) < len(corpus_text.encode("utf-8")) / 2
    assert max(ids) < bpe_tok.n_vocab


def test_bpe_vocab_size_counts_the_special_tokens(corpus_text):
    tok = train_bpe_tokenizer(iter([corpus_text]), 300)
    assert tok.n_vocab == 300
    assert {tok.special_id(name) for name in SPECIAL_TOKENS} == set(range(300 - len(SPECIAL_TOKENS), 300))


def test_special_tokens_exist_with_distinct_ids(tok):
    ids = [tok.special_id(name) for name in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    assert tok.eot_id == tok.special_id(END_OF_TEXT)
    assert all(0 <= i < tok.n_vocab for i in ids)
    ordinary = set(tok.encode(SAMPLES["mixed"] + SAMPLES["english"]))
    assert not ordinary & set(ids)  # no text ever encodes to a special id


def test_all_kinds_reserve_the_same_special_tokens(bytes_tok, bpe_tok):
    assert set(bytes_tok.encoding.special_tokens_set) == set(SPECIAL_TOKENS)
    assert set(bpe_tok.encoding.special_tokens_set) == set(SPECIAL_TOKENS)


@pytest.mark.parametrize("name", SPECIAL_TOKENS)
def test_special_token_spelling_in_text_is_plain_text(tok, name):
    text = f"before {name} after"
    ids = tok.encode(text)
    assert tok.special_id(name) not in ids
    assert tok.eot_id not in ids
    assert tok.decode(ids) == text


def test_json_round_trip_gives_identical_encodings(tok):
    again = Tokenizer.from_json(tok.to_json())
    assert again.kind == tok.kind
    assert again.n_vocab == tok.n_vocab
    assert again.eot_id == tok.eot_id
    for text in SAMPLES.values():
        assert again.encode(text) == tok.encode(text)
    assert [again.special_id(n) for n in SPECIAL_TOKENS] == [tok.special_id(n) for n in SPECIAL_TOKENS]
    assert again.to_json() == tok.to_json()


def test_malformed_tokenizer_json_is_a_usage_error():
    with pytest.raises(UsageError, match="malformed"):
        Tokenizer.from_json('{"kind": "bytes"}')
    with pytest.raises(UsageError, match="malformed"):
        Tokenizer.from_json("not json")


@pytest.mark.parametrize("vocab_size", [0, 100, 256 + len(SPECIAL_TOKENS) - 1])
def test_too_small_bpe_vocab_is_a_usage_error(corpus_text, vocab_size):
    with pytest.raises(UsageError, match="too small"):
        train_bpe_tokenizer(iter([corpus_text]), vocab_size)


def test_lone_surrogate_is_a_usage_error(tok):
    with pytest.raises(UsageError, match="not valid Unicode"):
        tok.encode("abc\ud800def")
    with pytest.raises(UsageError):
        tok.encode_batch(["fine", "bad \ud800"])


def test_encode_array_gives_the_ids_encode_gives(tok):
    for text in [*SAMPLES.values(), "", "x <|endoftext|> <|bos|> y"]:  # special-token spellings stay plain text
        array = tok.encode_array(text)
        assert array.dtype == "uint32" and array.tolist() == tok.encode(text)
    with pytest.raises(UsageError, match="not valid Unicode at position 4"):
        tok.encode_array("bad \ud800")


def test_bpe_training_refuses_a_lone_surrogate_in_one_line(corpus_text):
    with pytest.raises(UsageError, match="not valid Unicode"):
        train_bpe_tokenizer(iter([corpus_text, "bad \ud800"]), 300)


LINE_PARTS = ["x", "Ab", "  ", "\t", "\r", "\n", "\n\n", "!?", "123", "'s", "你好", "\u2028", "\x85", "\xa0", "\x1c", "é"]


@given(parts=st.lists(st.sampled_from(LINE_PARTS), max_size=80), size=st.integers(1, 12))
def test_word_aligned_pieces_hold_exactly_the_words_of_the_whole_text(parts, size):
    """Where BPE training cuts a document, the split pattern finds the same words as in the whole document."""
    text = "".join(parts)
    pieces = list(word_aligned_pieces(text, size))
    assert "".join(pieces) == text
    pattern = regex.compile(SPLIT_PATTERN)
    assert [w for piece in pieces for w in pattern.findall(piece)] == pattern.findall(text)


def test_bpe_trained_on_cut_documents_learns_the_same_merges(corpus_text, monkeypatch):
    whole = train_bpe_tokenizer(iter([corpus_text] * 3), 400)
    monkeypatch.setattr(tokenizer, "BPE_PIECE_CHARS", 100)
    monkeypatch.setattr(tokenizer, "BPE_BUFFER_TEXTS", 4)
    assert len(list(word_aligned_pieces(corpus_text, 100))) > 100
    cut = train_bpe_tokenizer(iter([corpus_text] * 3), 400)
    assert cut.encoding._mergeable_ranks == whole.encoding._mergeable_ranks


def test_encode_batch_matches_encode(tok):
    texts = list(SAMPLES.values())
    assert tok.encode_batch(texts, num_threads=2) == [tok.encode(t) for t in texts]


def test_token_byte_lengths_sum_to_utf8_length(tok):
    lengths = tok.token_byte_lengths()
    assert len(lengths) == tok.n_vocab
    for text in SAMPLES.values():
        assert sum(lengths[i] for i in tok.encode(text)) == len(text.encode("utf-8"))
    assert all(lengths[tok.special_id(n)] == 0 for n in SPECIAL_TOKENS)  # special tokens carry no text


def test_decode_of_split_character_replaces_instead_of_raising(bytes_tok):
    ids = bytes_tok.encode("你")  # three bytes
    assert bytes_tok.decode(ids[:2]) == "\ufffd"


def test_gpt2_tokenizer_keeps_gpt2_ids(gpt2_tok):
    assert gpt2_tok.eot_id == 50256
    assert gpt2_tok.encode("Hello world") == [15496, 995]
    assert min(gpt2_tok.special_id(n) for n in SPECIAL_TOKENS if n != END_OF_TEXT) == 50257


def test_gpt2_offline_error_explains_how_to_provide_the_cache(monkeypatch):
    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(UsageError) as info:
        gpt2_tokenizer()
    message = str(info.value)
    assert "TIKTOKEN_CACHE_DIR" in message
    assert "--tokenizer=bytes" in message or "--tokenizer=bpe" in message
    assert "ConnectionError" in message


def test_gpt2_tokenizer_keeps_the_encodings_own_end_of_text_id(monkeypatch):
    """Offline stand-in for GPT-2's encoding: its <|endoftext|> id is kept, the other specials follow it."""
    fake = tiktoken.Encoding("gpt2", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={END_OF_TEXT: 256})
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: fake)
    tok = gpt2_tokenizer()
    assert tok.kind == "gpt2"
    assert tok.eot_id == 256
    assert [tok.special_id(n) for n in SPECIAL_TOKENS[1:]] == list(range(257, 257 + len(SPECIAL_TOKENS) - 1))
    assert tok.decode(tok.encode(SAMPLES["mixed"])) == SAMPLES["mixed"]
    assert Tokenizer.from_json(tok.to_json()).encode(SAMPLES["mixed"]) == tok.encode(SAMPLES["mixed"])


def test_byte_tokenizer_layout():
    tok = byte_tokenizer()
    assert tok.n_vocab == 256 + len(SPECIAL_TOKENS)
    assert tok.eot_id == 256
