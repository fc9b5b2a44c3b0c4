"""Tokenizers, all served through `tiktoken.Encoding`: GPT-2's, a byte-level BPE trained with rustbpe, or raw bytes.

Every kind reserves the same special tokens, so chat fine-tuning later never changes the vocabulary.
A tokenizer serialises to JSON (pattern, merge ranks, special tokens) and travels with the data and every checkpoint.
"""
import base64
import json

import tiktoken

from gptkit.errors import UsageError

END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = (
    END_OF_TEXT,  # separates documents; also ends generation
    "<|bos|>",
    "<|system_start|>", "<|system_end|>",
    "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>",
)
# GPT-4's split pattern: words, numbers up to 3 digits, punctuation runs, whitespace.
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
TOKENIZER_KINDS = ("bpe", "bytes", "gpt2")

GPT2_OFFLINE_HELP = (
    "tiktoken could not load GPT-2's encoding (it downloads it once, and this machine seems offline). "
    "On a machine with internet run `TIKTOKEN_CACHE_DIR=tiktoken_cache python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\"`, "
    "copy the tiktoken_cache folder here and set TIKTOKEN_CACHE_DIR to it; or use --tokenizer=bpe or --tokenizer=bytes"
)


class Tokenizer:
    def __init__(self, kind, ranks, special_tokens, pattern=SPLIT_PATTERN):
        self.kind = kind
        self.encoding = tiktoken.Encoding(name=kind, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special_tokens)
        self.eot_id = special_tokens[END_OF_TEXT]

    @property
    def n_vocab(self):
        return self.encoding.n_vocab

    def special_id(self, name):
        return self.encoding.encode_single_token(name)

    def encode(self, text):
        """Encode text; special-token spellings inside it are plain text, never control tokens."""
        return self.encoding.encode_ordinary(_checked(text))

    def encode_batch(self, texts, num_threads=8):
        return self.encoding.encode_ordinary_batch([_checked(t) for t in texts], num_threads=num_threads)

    def encode_array(self, text):
        """The ids encode gives, as a uint32 numpy array: no Python list is built (what data/prepare.py writes).

        tiktoken checks the text as it reads it, so a lone surrogate costs nothing extra to refuse; an empty set of
        allowed special tokens makes their spellings plain text, as encode_ordinary does.
        """
        try:
            return self.encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
        except UnicodeEncodeError as e:
            raise _invalid_unicode(text, e) from None

    def decode(self, ids):
        return self.encoding.decode(list(ids), errors="replace")

    def decode_bytes(self, ids):
        return self.encoding.decode_bytes(list(ids))

    def token_byte_lengths(self):
        """UTF-8 byte length of every token id; special tokens count 0 bytes (they are not text)."""
        special = set(self.encoding.special_tokens_set)
        lengths = [0] * self.n_vocab
        for token_bytes, rank in self.encoding._mergeable_ranks.items():
            lengths[rank] = len(token_bytes)
        for name in special:
            lengths[self.special_id(name)] = 0
        return lengths

    def to_json(self):
        ranks = sorted(self.encoding._mergeable_ranks.items(), key=lambda kv: kv[1])
        return json.dumps({
            "kind": self.kind,
            "pattern": self.encoding._pat_str,
            "ranks": [base64.b64encode(b).decode("ascii") for b, _ in ranks],
            "special_tokens": self.encoding._special_tokens,
        })

    @classmethod
    def from_json(cls, text):
        try:
            d = json.loads(text)
            ranks = {base64.b64decode(b): i for i, b in enumerate(d["ranks"])}
            return cls(d["kind"], ranks, {k: int(v) for k, v in d["special_tokens"].items()}, d["pattern"])
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"the saved tokenizer is malformed ({e}); prepare the data again") from None


def _checked(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _invalid_unicode(text, e) from None
    return text


def _invalid_unicode(text, error):
    """The error for text holding a lone surrogate (from JSON's \\ud800 escapes, say), which UTF-8 cannot encode."""
    return UsageError(f"the text has a character that is not valid Unicode at position {error.start} ({text[error.start]!r}); pass UTF-8 text")


def utf8_length(text):
    """Bytes of `text` in UTF-8, without encoding it when it is ASCII (str.isascii is a flag CPython keeps)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _with_specials(ranks, specials=None):
    """Give every reserved special token an id after the merge ranks (keeping ids a tokenizer already has)."""
    specials = dict(specials or {})
    next_id = max([len(ranks) - 1, *specials.values()]) + 1
    for name in SPECIAL_TOKENS:
        if name not in specials:
            specials[name] = next_id
            next_id += 1
    return specials


def byte_tokenizer():
    """256 byte ids plus the special tokens: always available, handles any text."""
    ranks = {bytes([i]): i for i in range(256)}
    return Tokenizer("bytes", ranks, _with_specials(ranks))


# rustbpe copies its texts into Rust strings BPE_BUFFER_TEXTS at a time (8192 by default) before counting their words:
# with documents cut to about BPE_PIECE_CHARS, that buffer stays near 64 MB whatever the documents' sizes.
BPE_BUFFER_TEXTS = 1024
BPE_PIECE_CHARS = 1 << 16


def train_bpe_tokenizer(texts, vocab_size):
    """Train a byte-level BPE with rustbpe on an iterator of strings; vocab_size counts the special tokens.

    rustbpe streams the texts (a buffer at a time) but keeps every distinct word of them with its count until it has
    merged: its memory grows with the distinct words of all the text, which the caller bounds by giving less text.
    """
    import rustbpe

    n_merged = vocab_size - len(SPECIAL_TOKENS)
    if n_merged < 256:
        raise UsageError(f"--vocab_size={vocab_size} is too small for a BPE tokenizer; use at least {256 + len(SPECIAL_TOKENS)}, or --tokenizer=bytes")
    trainer = rustbpe.Tokenizer()
    pieces = (piece for text in texts for piece in word_aligned_pieces(text, BPE_PIECE_CHARS))
    try:
        trainer.train_from_iterator(pieces, n_merged, buffer_size=BPE_BUFFER_TEXTS, pattern=SPLIT_PATTERN)
    except UnicodeEncodeError as e:  # rustbpe copies each text into a Rust String: a lone surrogate cannot be copied
        raise _invalid_unicode(e.object, e) from None
    ranks = dict(trainer.get_mergeable_ranks())
    return Tokenizer("bpe", ranks, _with_specials(ranks))


def word_aligned_pieces(text, size):
    """`text` in pieces of `size` characters and then on to the next line break that a non-space follows (the last
    piece is what remains; a text with no such line break past `size` is one piece).

    SPLIT_PATTERN always ends a word there and starts the next (no alternative matches a line break and then a
    non-space), so the pieces hold exactly the words of the whole text: BPE trained on them learns the same merges.
    str.isspace counts every character the pattern's \\s does, and a few more, so a cut is never where \\s would disagree.
    """
    start = 0
    while len(text) - start > size:
        cut = text.find("\n", start + size)
        while cut != -1 and (cut + 1 == len(text) or text[cut + 1].isspace()):
            cut = text.find("\n", cut + 1)
        if cut == -1:
            break
        yield text[start:cut + 1]
        start = cut + 1
    yield text[start:]


def gpt2_tokenizer():
    """tiktoken's GPT-2 encoding (50,257 ids, <|endoftext|> = 50256) plus the other special tokens after it."""
    try:
        enc = tiktoken.get_encoding("gpt2")
    except Exception as e:  # network errors come from requests/urllib, whatever tiktoken uses
        raise UsageError(f"{GPT2_OFFLINE_HELP} ({type(e).__name__})") from None
    return Tokenizer("gpt2", enc._mergeable_ranks, _with_specials(enc._mergeable_ranks, enc._special_tokens), enc._pat_str)
