"""The GPT: shapes, causality, published GPT-2 sizes, preset details, and a KV cache that matches a full forward."""
import pytest
import torch

from gptkit.model import GPT, GPT2_SIZES, GPTConfig, KVCache
from helpers import tiny_config, tiny_model

POS_ENCODINGS = ["learned", "sinusoidal", "rope"]
VARIANTS = [(preset, pe) for preset in ("gpt2", "modern") for pe in POS_ENCODINGS]


@pytest.mark.parametrize("preset, pos_encoding", VARIANTS)
def test_forward_shapes_and_loss(preset, pos_encoding):
    model = tiny_model(preset, pos_encoding, vocab_size=50, block_size=16)
    idx = torch.randint(0, 50, (3, 11))
    logits = model(idx)
    assert logits.shape == (3, 11, 50)
    assert torch.isfinite(logits).all()
    loss = model(idx, targets=idx)
    assert loss.dim() == 0 and torch.isfinite(loss)
    per_token = model(idx, targets=idx, reduction="none")
    assert per_token.shape == (33,)
    assert per_token.mean().item() == pytest.approx(loss.item(), rel=1e-5)


def test_untrained_loss_is_near_uniform():
    model = tiny_model("gpt2", vocab_size=64)
    idx, targets = torch.randint(0, 64, (2, 4, 16))
    assert model(idx, targets=targets).item() == pytest.approx(torch.log(torch.tensor(64.0)).item(), rel=0.05)


def test_targets_of_minus_one_are_ignored():
    model = tiny_model("gpt2")
    idx = torch.randint(0, 64, (1, 8))
    targets = idx.clone()
    targets[0, 4:] = -1
    assert model(idx, targets=targets).item() == pytest.approx(model(idx[:, :4], targets=idx[:, :4]).item(), rel=1e-5)


@pytest.mark.parametrize("preset, pos_encoding", VARIANTS)
def test_changing_a_future_token_never_changes_earlier_logits(preset, pos_encoding):
    model = tiny_model(preset, pos_encoding, scale=0.3, vocab_size=50, block_size=16)
    idx = torch.randint(0, 50, (2, 16))
    base = model(idx)
    for t in (0, 5, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 50
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, t:], base[:, t:], atol=1e-4)  # the change is seen from t on


@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
def test_position_matters(pos_encoding):
    """The same token at different positions gets different logits: every encoding carries position."""
    model = tiny_model("gpt2", pos_encoding, scale=0.3, vocab_size=50, block_size=16)
    idx = torch.tensor([[7, 3, 3, 3, 3]])
    logits = model(idx)
    assert not torch.allclose(logits[0, 1], logits[0, 4], atol=1e-4)


@pytest.mark.parametrize("name, expected", [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)])
def test_gpt2_sizes_have_the_published_parameter_counts(name, expected):
    n_layer, n_head, n_embd = GPT2_SIZES[name]
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset("gpt2", n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=50257, block_size=1024))
    assert model.num_params() == expected
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, counted once


def test_modern_preset_has_no_biases_an_untied_head_and_zero_projections():
    torch.manual_seed(0)
    model = GPT(tiny_config("modern"))
    names = [name for name, _ in model.named_parameters()]
    assert not [n for n in names if n.endswith("bias")]
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    assert "lm_head.weight" in names
    projections = [p for n, p in model.named_parameters() if n.endswith("c_proj.weight")]
    assert len(projections) == 2 * model.config.n_layer  # attention and MLP of every block
    assert all((p == 0).all() for p in projections)
    assert "transformer.wpe.weight" not in names  # rope: no learned position table


def test_gpt2_preset_layout():
    torch.manual_seed(0)
    model = GPT(tiny_config("gpt2"))
    names = [name for name, _ in model.named_parameters()]
    assert "transformer.wpe.weight" in names
    assert any(n.endswith("c_attn.bias") for n in names)
    assert "lm_head.weight" not in names  # tied to wte
    for n, p in model.named_parameters():
        if n.endswith("c_proj.weight"):
            assert p.abs().sum() > 0


@pytest.mark.parametrize("preset, pos_encoding", VARIANTS)
def test_kv_cache_matches_full_forward(preset, pos_encoding):
    model = tiny_model(preset, pos_encoding, vocab_size=50, block_size=24)
    idx = torch.randint(0, 50, (2, 24))
    full = model(idx)
    cache = KVCache(model.config, 2, 24, "cpu")
    pieces = [model(idx[:, :6], kv_cache=cache)]  # prefill
    assert cache.pos == 6
    pieces.append(model(idx[:, 6:11], kv_cache=cache))  # continued prefill after a cached prefix (past > 0, T > 1)
    for t in range(11, 24):  # one token at a time
        pieces.append(model(idx[:, t:t + 1], kv_cache=cache))
    assert cache.pos == 24
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)


def test_cache_rewound_to_a_prefix_recomputes_the_same_logits():
    """Resetting `pos` reuses the cached prefix: what the context shift in generation relies on."""
    model = tiny_model("modern", vocab_size=50, block_size=16)
    idx = torch.randint(0, 50, (1, 12))
    cache = KVCache(model.config, 1, 16, "cpu")
    model(idx[:, :8], kv_cache=cache)
    first = model(idx[:, 8:], kv_cache=cache)
    cache.pos = 0
    again = model(idx, kv_cache=cache)[:, 8:]
    torch.testing.assert_close(again, first, rtol=0, atol=1e-5)


def test_flops_per_token_grows_with_depth():
    flops = [tiny_model("gpt2", n_layer=n).flops_per_token() for n in (1, 2, 4)]
    assert flops[0] > 0
    assert flops[0] < flops[1] < flops[2]


def test_flops_per_token_counts_the_tied_output_layer():
    """6 FLOPs per matmul weight (the head counts even when tied to the embedding) plus attention."""
    model = tiny_model("gpt2", vocab_size=64, block_size=16, n_layer=2, n_embd=16)
    c = model.config
    per_block = 12 * c.n_embd * c.n_embd  # c_attn 3C*C, c_proj C*C, c_fc 4C*C, mlp c_proj 4C*C
    expected = 6 * (c.n_layer * per_block + c.vocab_size * c.n_embd) + 12 * c.n_layer * c.n_embd * c.block_size
    assert model.flops_per_token() == expected


def test_sequence_longer_than_block_size_raises():
    model = tiny_model("gpt2", block_size=16)
    model(torch.zeros(1, 16, dtype=torch.long))  # exactly the context is fine
    with pytest.raises(ValueError, match="longer than the model's context"):
        model(torch.zeros(1, 17, dtype=torch.long))
    cache = KVCache(model.config, 1, 16, "cpu")
    model(torch.zeros(1, 10, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="longer"):
        model(torch.zeros(1, 7, dtype=torch.long), kv_cache=cache)


@pytest.mark.parametrize("bad", [dict(n_embd=18, n_head=4), dict(pos_encoding="alibi"), dict(norm="batchnorm"), dict(mlp="swiglu")])
def test_invalid_config_is_rejected(bad):
    with pytest.raises(ValueError):
        GPTConfig(**{**dict(n_layer=1, n_head=2, n_embd=16), **bad})


def test_rope_needs_an_even_head_size():
    with pytest.raises(ValueError, match="even head size"):
        GPTConfig.from_preset("modern", n_embd=18, n_head=6)
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.from_preset("llama")


def test_config_round_trips_through_a_dict():
    config = tiny_config("modern", rope_base=500.0)
    assert GPTConfig.from_dict({**vars(config), "unknown_future_key": 1}) == config


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["gpt2", "modern"])
def test_full_size_gpt2_kv_cache_matches_full_forward(preset):
    """At GPT-2 124M scale (float32 on CPU) the cached decode still agrees with a full forward."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(preset, n_layer=12, n_head=12, n_embd=768, vocab_size=50304, block_size=1024)).eval()
    if model.config.zero_init_proj:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("c_proj.weight"):
                    p.normal_(0.0, 0.02)
    idx = torch.randint(0, 50257, (1, 48))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(model.config, 1, 1024, "cpu")
        pieces = [model(idx[:, :32], kv_cache=cache)] + [model(idx[:, t:t + 1], kv_cache=cache) for t in range(32, 48)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-4)


@pytest.mark.parametrize("preset", ["gpt2", "modern"])
def test_last_only_gives_the_last_positions_logits(preset):
    model = tiny_model(preset, vocab_size=48, block_size=16)
    idx = torch.randint(0, 48, (2, 10))
    with torch.no_grad():
        full, last = model(idx), model(idx, last_only=True)
    assert last.shape == (2, 1, 48)
    assert torch.allclose(last[:, 0], full[:, -1], atol=1e-6)
