"""generate(): the cached decode loop agrees with plain recomputation, is reproducible, stops, masks, and outlives the context."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gptkit.engine import TextStream, generate, sample_next
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
    assert stream.feed("你".encode()[0]) == ""
    assert stream.flush() == "\ufffd"


# --- sampling filters, the repetition penalty, stop strings, prefix reuse, beam search ---------------------------

from itertools import product  # noqa: E402

from gptkit.engine import Engine, SamplingOptions, beam_search, check_sampling, penalize_repetition, stream_text  # noqa: E402
from gptkit.errors import UsageError  # noqa: E402


def picks(logits, n=400, **kwargs):
    generator = torch.Generator().manual_seed(0)
    return {sample_next(logits, generator=generator, **kwargs).item() for _ in range(n)}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert picks(probs.log(), top_p=0.7) == {0, 1}  # 0.5 < 0.7 <= 0.8
    assert picks(probs.log(), top_p=0.81) == {0, 1, 2}
    assert picks(probs.log(), top_p=0.01) == {0}  # the most likely token always survives


def test_min_p_drops_tokens_far_less_likely_than_the_best():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert picks(probs.log(), min_p=0.25) == {0, 1, 2}  # 0.05 < 0.25 * 0.5
    assert picks(probs.log(), min_p=0.7) == {0}


def test_repetition_penalty_lowers_recent_tokens_whatever_their_sign():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    penalized = penalize_repetition(logits.clone(), [0, 1, 1], 2.0)
    assert penalized.tolist() == [[1.0, -4.0, 1.0, 0.5]]
    model = tiny_model("gpt2", scale=0.5, vocab_size=48, block_size=64, n_embd=32)
    plain = list(generate(model, [3, 4], 40, temperature=0))
    varied = list(generate(model, [3, 4], 40, temperature=0, repetition_penalty=5.0, repetition_window=8))
    assert len(set(varied[-16:])) > len(set(plain[-16:]))  # the penalty breaks the greedy loop


@pytest.mark.parametrize("field, value", [("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("min_p", 1.0),
                                          ("repetition_penalty", 0.0), ("max_new_tokens", -1), ("top_k", 0)])
def test_out_of_range_sampling_options_are_refused_by_name(field, value):
    with pytest.raises(UsageError, match=field):
        check_sampling(SamplingOptions(**{field: value}))


def test_stop_strings_end_the_text_before_them_even_across_tokens(bytes_tok):
    tokens = bytes_tok.encode("Hello USER: never shown")
    pieces = list(stream_text(iter(tokens), bytes_tok, ["USER:"]))
    assert "".join(pieces) == "Hello "
    assert not any("U" in p for p in pieces)  # the start of the stop string was held back, never printed
    assert "".join(stream_text(iter(bytes_tok.encode("US and UK")), bytes_tok, ["USER:"])) == "US and UK"
    assert "".join(stream_text(iter(bytes_tok.encode(SAMPLES["emoji"])), bytes_tok, [])) == SAMPLES["emoji"]


def test_engine_reuses_the_cached_prefix_and_matches_a_fresh_prefill():
    model = tiny_model("modern", vocab_size=48, block_size=32, n_embd=32)
    engine = Engine(model)
    first = [1, 2, 3, 4, 5, 6]
    engine.prefill(first)
    assert engine.last_prefill == {"reused": 0, "prefilled": 6}
    extended = first + [7, 8, 9]
    logits = engine.prefill(extended)
    assert engine.last_prefill == {"reused": 6, "prefilled": 3}
    assert torch.allclose(logits, Engine(model).prefill(extended), atol=1e-5)
    edited = [1, 2, 3, 40, 41]  # an edit after the third token keeps only those
    logits = engine.prefill(edited)
    assert engine.last_prefill == {"reused": 3, "prefilled": 2}
    assert torch.allclose(logits, Engine(model).prefill(edited), atol=1e-5)
    engine.prefill(edited)  # the same prompt again still computes its last token, for the logits
    assert engine.last_prefill == {"reused": 4, "prefilled": 1}


def sequence_logprob(model, prompt, continuation):
    ids = torch.tensor([prompt + continuation])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids)[0, :-1].float(), dim=-1)
    return sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(continuation))


def test_beam_search_as_wide_as_the_tree_finds_the_most_likely_sequence():
    model = tiny_model("gpt2", scale=1.0, vocab_size=5, block_size=16, n_embd=16)
    prompt = [1, 2]
    best = max(product(range(5), repeat=3), key=lambda seq: sequence_logprob(model, prompt, list(seq)))
    assert beam_search(model, prompt, beam_size=25, max_new_tokens=3) == list(best)
    assert beam_search(model, prompt, beam_size=1, max_new_tokens=6) == list(generate(model, prompt, 6, temperature=0))


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_ranks_ended_beams_by_length_normalised_log_probability(length_penalty):
    """Wide enough to keep every beam, the search must return the best of all 15 possible outcomes."""
    model = tiny_model("gpt2", scale=1.0, vocab_size=3, block_size=16, n_embd=16)
    prompt, stop = [1, 2], 0
    outcomes = [[0], [1, 0], [2, 0]] + [[a, b, 0] for a in (1, 2) for b in (1, 2)] + [[a, b, c] for a in (1, 2) for b in (1, 2) for c in (1, 2)]
    best = max(outcomes, key=lambda s: sequence_logprob(model, prompt, s) / len(s) ** length_penalty)
    result = beam_search(model, prompt, 27, 3, stop_ids={stop}, length_penalty=length_penalty)
    assert result == best
    assert result == beam_search(model, prompt, 27, 3, stop_ids={stop}, length_penalty=length_penalty)
