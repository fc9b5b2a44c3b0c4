"""generate(): the cached decode loop agrees with plain recomputation, is reproducible, stops, masks, and outlives the context."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from generate import TextStream, generate, sample_next
from helpers import SAMPLES, tiny_model


def greedy_without_cache(model, prompt, n):
    """Reference: argmax of a full forward at every step, dropping the older half when the context is full."""
    block = model.config.block_size
    context, out = list(prompt)[-block:], []
    with torch.no_grad():
        while len(out) < n:
            token = model(torch.tensor([context]))[0, -1].argmax().item()
            out.append(token)
            context.append(token)
            if len(context) > block:
                context = context[-(block // 2):]
    return out


@pytest.mark.parametrize("preset, pos_encoding", [("gpt2", "learned"), ("modern", "rope"), ("gpt2", "sinusoidal")])
def test_greedy_with_cache_equals_recomputation(preset, pos_encoding):
    model = tiny_model(preset, pos_encoding, scale=0.5, vocab_size=48, block_size=32, n_embd=32)
    prompt = [3, 17, 5, 40, 22]
    cached = list(generate(model, prompt, 20, temperature=0))
    assert cached == greedy_without_cache(model, prompt, 20)
    assert len(set(cached)) > 1  # not a degenerate model that repeats one token


def test_greedy_past_the_context_equals_recomputation_with_the_same_shift():
    model = tiny_model("gpt2", "learned", scale=0.5, vocab_size=48, block_size=16, n_embd=32)
    prompt = list(range(1, 12))
    assert list(generate(model, prompt, 40, temperature=0)) == greedy_without_cache(model, prompt, 40)


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope"])
def test_generation_runs_past_block_size(pos_encoding):
    model = tiny_model("gpt2", pos_encoding, vocab_size=48, block_size=16)
    out = list(generate(model, [1, 2, 3], 50, temperature=1.0, seed=0))
    assert len(out) == 50
    assert all(0 <= t < 48 for t in out)


def test_prompt_longer_than_the_context_keeps_its_end():
    model = tiny_model("gpt2", scale=0.5, vocab_size=48, block_size=16, n_embd=32)
    long_prompt = list(range(40))
    assert list(generate(model, long_prompt, 5, temperature=0)) == list(generate(model, long_prompt[-16:], 5, temperature=0))


def test_same_seed_same_samples_different_seed_different_samples():
    model = tiny_model("gpt2", vocab_size=64)  # untrained: close to uniform, so samples vary a lot
    first = list(generate(model, [1, 2], 30, temperature=1.0, seed=123))
    assert list(generate(model, [1, 2], 30, temperature=1.0, seed=123)) == first
    assert list(generate(model, [1, 2], 30, temperature=1.0, seed=124)) != first


def test_greedy_ignores_the_seed():
    model = tiny_model("modern", vocab_size=48)
    assert list(generate(model, [1, 2], 10, temperature=0, seed=1)) == list(generate(model, [1, 2], 10, temperature=0, seed=2))


def test_top_k_of_one_is_greedy():
    model = tiny_model("gpt2", scale=0.5, vocab_size=48, n_embd=32)
    assert list(generate(model, [5], 12, temperature=1.0, top_k=1, seed=0)) == list(generate(model, [5], 12, temperature=0))


def test_stop_ids_stop_after_the_stop_token():
    model = tiny_model("gpt2", scale=0.5, vocab_size=48, block_size=32, n_embd=32)
    full = list(generate(model, [7, 8], 20, temperature=0))
    stop = full[4]
    first = full.index(stop)
    assert list(generate(model, [7, 8], 20, temperature=0, stop_ids={stop})) == full[:first + 1]


def test_vocab_limit_masks_padding_ids():
    model = tiny_model("gpt2", vocab_size=64)
    unlimited = list(generate(model, [1], 200, temperature=1.0, seed=0))
    assert max(unlimited) >= 10  # without the limit, high ids do come up
    limited = list(generate(model, [1], 200, temperature=1.0, seed=0, vocab_limit=10))
    assert len(limited) == 200 and max(limited) < 10


def test_vocab_limit_applies_to_greedy_too():
    model = tiny_model("gpt2", scale=0.5, vocab_size=48, n_embd=32)
    with torch.no_grad():
        model.lm_head.weight[40:] *= 50  # make the padding ids the most likely ones
    assert any(t >= 40 for t in generate(model, [1], 10, temperature=0))
    assert all(t < 40 for t in generate(model, [1], 10, temperature=0, vocab_limit=40))


def test_zero_new_tokens_and_empty_prompt():
    model = tiny_model("gpt2")
    assert list(generate(model, [1, 2], 0)) == []
    with pytest.raises(ValueError, match="at least one prompt token"):
        list(generate(model, [], 5))


def test_sample_next_top_k_restricts_to_the_k_most_likely():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0, 3.0]])
    generator = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, temperature=2.0, top_k=2, generator=generator).item() for _ in range(200)}
    assert picks == {1, 2}
    assert sample_next(logits, temperature=0).item() == 1


@pytest.mark.parametrize("name", ["chinese", "emoji", "mixed"])
def test_text_stream_never_emits_a_partial_character(bytes_tok, name):
    text = SAMPLES[name]
    stream = TextStream(bytes_tok)
    pieces = [stream.feed(t) for t in bytes_tok.encode(text)]
    pieces.append(stream.flush())
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p) == len(text)  # each character comes out whole, once its last byte arrives


@given(text=st.text(max_size=60))
def test_text_stream_reassembles_any_text(bpe_tok, text):
    stream = TextStream(bpe_tok)
    pieces = [stream.feed(t) for t in bpe_tok.encode(text)] + [stream.flush()]
    assert "".join(pieces) == text


def test_text_stream_flush_marks_an_unfinished_character(bytes_tok):
    stream = TextStream(bytes_tok)
    assert stream.feed("你".encode("utf-8")[0]) == ""
    assert stream.flush() == "\ufffd"
