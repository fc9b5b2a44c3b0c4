"""Our tokenizers as llama.cpp's `gpt2` BPE vocabulary: token strings, token types and merges.

llama.cpp's BPE reads tokens spelled in GPT-2's byte-to-unicode form (every byte one printable character) and a list
of merges ("a b", best first), where tiktoken keeps only the rank of each token's bytes. The merges are recovered
from the ranks: running BPE on a token's bytes with only the ranks below its own ends in the two parts it was made of.
"""
from gptkit.errors import UsageError
from gptkit.tokenizer import SPLIT_PATTERN

# llama.cpp's names for the pre-tokenizer regex (tokenizer.ggml.pre): GPT-2's, and GPT-4's split (which llama.cpp knows
# as Llama 3's; it also looks a whole piece up before merging, as tiktoken does).
PRE_TOKENIZERS = {"gpt2": "gpt-2", SPLIT_PATTERN: "llama-bpe"}
NORMAL, CONTROL = 1, 3  # llama.cpp's token types


def bytes_to_unicode():
    """GPT-2's map from each byte to a printable character: printable Latin-1 bytes stand for themselves, the rest
    (controls, space, ...) take the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def pre_tokenizer(tokenizer):
    """llama.cpp's name for the tokenizer's split regex; one line when it has none."""
    name = PRE_TOKENIZERS.get(tokenizer.kind if tokenizer.kind == "gpt2" else tokenizer.encoding._pat_str)
    if name is None:
        raise UsageError(f"the {tokenizer.kind} tokenizer splits text with a regex llama.cpp does not know; only GPT-2's and gptkit's own "
                         "(GPT-4's) map to a llama.cpp pre-tokenizer")
    return name


def split_by_lower_ranks(ranks, token, below):
    """The parts BPE leaves of `token` when only merges ranked below `below` may apply (tiktoken's merge loop)."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], below))
        if ranks.get(parts[best] + parts[best + 1], below) >= below:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return parts


def recover_merges(ranks):
    """The merges (left bytes, right bytes) in rank order, one per token longer than a byte."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = split_by_lower_ranks(ranks, token, rank)
        if len(parts) != 2:
            raise UsageError(f"token {rank} ({token!r}) is not the merge of two earlier tokens, so the tokenizer has no BPE merges to export")
        merges.append((parts[0], parts[1]))
    return merges


def gguf_vocabulary(tokenizer):
    """(token strings, token types, merges as "a b" strings) for ids 0 .. n_vocab - 1."""
    ranks, specials = tokenizer.encoding._mergeable_ranks, tokenizer.encoding._special_tokens
    by_id = {rank: token for token, rank in ranks.items()}
    missing = [i for i in range(256) if bytes([i]) not in ranks]
    if missing:
        raise UsageError(f"the tokenizer has no token for byte {missing[0]}; llama.cpp's BPE needs every byte as a token")
    spell = bytes_to_unicode()
    names = {i: name for name, i in specials.items()}
    tokens, types = [], []
    for i in range(tokenizer.n_vocab):
        if i in names:
            tokens.append(names[i])
            types.append(CONTROL)
        elif i in by_id:
            tokens.append("".join(spell[b] for b in by_id[i]))
            types.append(NORMAL)
        else:
            raise UsageError(f"the tokenizer has no token with id {i}; llama.cpp needs the ids to be contiguous")
    merges = [" ".join("".join(spell[b] for b in part) for part in pair) for pair in recover_merges(ranks)]
    return tokens, types, merges
