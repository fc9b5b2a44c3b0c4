"""The int8 model's one-token step in one native call (gptkit/native_decode.py, gptkit/kernels/decode_step.c): the same
logits and greedy tokens as PyTorch's step on the same int8 weights, in every architecture it serves; PyTorch where it
cannot serve."""
import dataclasses

import pytest
import torch

from gptkit import native
from gptkit.engine import Engine
from gptkit.model import GPT, GPTConfig
from gptkit.native_decode import NativeStep
from gptkit.precision import convert

pytestmark = pytest.mark.skipif(native.why_not_buildable() is not None, reason=f"the kernels cannot be built here: {native.why_not_buildable()}")

ARCHITECTURES = {
    "gpt2": GPTConfig.from_preset("gpt2", vocab_size=300, block_size=48, n_layer=2, n_head=4, n_embd=64),
    "modern": GPTConfig.from_preset("modern", vocab_size=300, block_size=48, n_layer=2, n_head=2, n_embd=64),
    "sinusoidal, rmsnorm, no bias, gelu": dataclasses.replace(
        GPTConfig.from_preset("gpt2", vocab_size=300, block_size=48, n_layer=2, n_head=4, n_embd=64),
        pos_encoding="sinusoidal", norm="rmsnorm", bias=False),
}


def int8_model(config, seed=0):
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the initial zeros and ones, so every norm weight and bias counts
            p.add_(0.1 * torch.randn_like(p))
    convert(model, "int8", "cpu")
    return model


def pytorch_engine(model):
    engine = Engine(model)
    engine.native = None
    return engine


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_the_native_step_gives_pytorchs_logits_and_greedy_tokens(name):
    model = int8_model(ARCHITECTURES[name])
    ours, theirs = Engine(model), pytorch_engine(model)
    assert ours.native is not None
    a, b = ours.prefill([5, 6, 7]), theirs.prefill([5, 6, 7])
    for _ in range(40):  # into the cache's later slots, past 32 keys a head
        token = int(b.argmax())
        assert int(a.argmax()) == token
        a, b = ours.decode_step(token), theirs.decode_step(token)
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    assert ours.cache.pos == theirs.cache.pos == 43


def test_generation_after_a_rewind_reads_the_keys_the_native_step_wrote():
    model = int8_model(ARCHITECTURES["gpt2"])
    engine, fresh = Engine(model), pytorch_engine(model)
    first = list(engine.generate([1, 2, 3], 12, temperature=0))
    history = [1, 2, 3, *first[:6]]  # a shorter shared prefix: the cache rewinds into what the native step wrote
    again = list(engine.generate(history + [9], 10, temperature=0))
    assert engine.last_prefill["reused"] == len(history)
    assert again == list(fresh.generate(history + [9], 10, temperature=0))


def test_pytorch_serves_what_the_native_step_cannot(monkeypatch):
    config = ARCHITECTURES["gpt2"]
    float32 = GPT(config).eval()
    assert Engine(float32).native is None  # not int8
    local = dataclasses.replace(config, window=8, attn_pattern="LG")
    assert Engine(int8_model(local)).native is None  # ring caches
    odd = dataclasses.replace(config, n_embd=40, n_head=4)
    assert Engine(int8_model(odd)).native is None  # a width the kernels cannot read
    monkeypatch.setenv(native.DISABLE_ENV, "1")
    native.forget()
    try:
        assert Engine(int8_model(config)).native is None
    finally:
        monkeypatch.delenv(native.DISABLE_ENV)
        native.forget()


def test_a_token_or_position_out_of_range_is_refused_in_one_line():
    model = int8_model(ARCHITECTURES["gpt2"])
    step = NativeStep.build(model, Engine(model).cache)
    with pytest.raises(ValueError, match="outside the vocabulary of 300"):
        step.step(300, 0)
    with pytest.raises(ValueError, match="past the cache's 48 slots"):
        step.step(1, 48)
