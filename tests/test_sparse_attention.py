"""Sparse attention: local (banded) and global layers, in training and through the KV cache, and in checkpoints."""
import os
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from test_bench import figure

import gptkit.model
from gptkit.chat_session import ChatSession
from gptkit.checkpoint import LAST, build_model, load_checkpoint, save_checkpoint
from gptkit.engine import Engine, beam_search
from gptkit.errors import UsageError
from gptkit.model import GPT, GPTConfig, KVCache, band_mask, blocked_local_attention, flex_local_attention
from gptkit.train_config import TrainConfig, model_config
from helpers import run_script, tiny_model
from test_chat import chat_model, fresh_reply, greedy, history
from test_cli import assert_one_line_error
from test_resilience import tiny_run
from train import train


def local_model(preset="modern", window=4, pattern="LG", block_size=48, n_layer=3, seed=0):
    return tiny_model(preset, vocab_size=64, block_size=block_size, n_layer=n_layer, window=window, attn_pattern=pattern, seed=seed)


@pytest.mark.parametrize("T, W, block", [(10, 3, 128), (17, 4, 128), (33, 8, 128), (64, 16, 128), (13, 1, 128), (40, 7, 128),
                                         (40, 7, 3), (33, 8, 4), (64, 16, 5), (17, 4, 1)])  # blocks of queries shorter than the window too
def test_the_blocked_layout_equals_the_band_mask_in_outputs_and_gradients(T, W, block):
    torch.manual_seed(T * W)
    q, k, v = (torch.randn(2, 3, T, 8, requires_grad=True) for _ in range(3))
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=band_mask(T, 0, W, "cpu"))
    blocked = blocked_local_attention(q, k, v, W, block=block)
    torch.testing.assert_close(blocked, reference, rtol=0, atol=2e-6)
    for a, b in zip(torch.autograd.grad(blocked.square().sum(), (q, k, v)), torch.autograd.grad(reference.square().sum(), (q, k, v))):
        torch.testing.assert_close(a, b, rtol=0, atol=5e-6)


def test_the_band_mask_sees_the_window_itself_included():
    assert band_mask(4, 0, 2, "cpu").int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    assert band_mask(2, 3, 2, "cpu").int().tolist() == [[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]  # after 3 cached keys


def test_layers_follow_the_pattern_and_the_last_stays_global():
    config = GPTConfig(n_layer=6, window=8, attn_pattern="LLLG")
    assert [config.layer_window(i) for i in range(6)] == [8, 8, 8, 0, 8, 0]
    assert [GPTConfig(n_layer=4, window=8, attn_pattern="LLLL").layer_window(i) for i in range(4)] == [8, 8, 8, 8]  # named every layer
    assert [GPTConfig(n_layer=4, window=8, attn_pattern="LG").layer_window(i) for i in range(4)] == [8, 0, 8, 0]


@pytest.mark.parametrize("preset", ["gpt2", "modern"])
def test_a_window_that_covers_the_context_is_dense_bit_for_bit(preset):
    dense = tiny_model(preset, vocab_size=64, block_size=24, n_layer=2)
    windowed = tiny_model(preset, vocab_size=64, block_size=24, n_layer=2, window=24, attn_pattern="L")
    windowed.load_state_dict(dense.state_dict())
    idx = torch.randint(0, 64, (2, 24))
    assert torch.equal(windowed(idx), dense(idx))


def test_a_local_layer_ignores_what_lies_outside_its_window():
    model = local_model(window=4, pattern="LLL", n_layer=3)  # every layer local: 3 layers reach back at most 3 * 3 tokens
    idx = torch.randint(0, 64, (1, 40))
    changed = idx.clone()
    changed[0, :20] = (changed[0, :20] + 1) % 64
    assert torch.equal(model(idx)[:, 30:], model(changed)[:, 30:])
    assert not torch.equal(model(idx)[:, 20:30], model(changed)[:, 20:30])


@pytest.mark.parametrize("preset", ["gpt2", "modern"])
def test_the_kv_cache_matches_the_full_forward_pass(preset):
    model = local_model(preset, window=5, pattern="LG", block_size=40)
    idx = torch.randint(0, 64, (2, 40))
    full = model(idx)  # T > 2W: the blocked layout
    cache = KVCache(model.config, 2, 40, "cpu")
    pieces = [model(idx[:, :7], kv_cache=cache), model(idx[:, 7:19], kv_cache=cache)]  # prefill, then more after a cached prefix
    pieces += [model(idx[:, t:t + 1], kv_cache=cache) for t in range(19, 40)]  # one token at a time, far past the window
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)


def test_generation_with_the_cache_equals_recomputing_every_step():
    model = local_model(window=4, pattern="LG", block_size=48)
    prompt = [3, 9, 4, 1, 7, 7, 2]
    cached = list(Engine(model).generate(prompt, 30, temperature=0))
    ids = list(prompt)
    for _ in range(30):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert cached == ids[len(prompt):]


def test_beam_search_and_a_chat_session_work_on_local_layers(bytes_tok):
    model = chat_model(bytes_tok, block_size=128, window=8, attn_pattern="LG")  # greedy replies that are valid text
    best = beam_search(model, [5, 6, 7], beam_size=3, max_new_tokens=12)
    assert best and best == beam_search(model, [5, 6, 7], beam_size=3, max_new_tokens=12)
    session = ChatSession(model, bytes_tok, greedy(max_new_tokens=10))
    replies = ["".join(session.respond(text)) for text in ("hello there", "and again", "a third turn")]
    assert replies[-1] == fresh_reply(model, bytes_tok, history(session), greedy(max_new_tokens=10))  # cache across turns = fresh prefill


@pytest.fixture
def small_rings(monkeypatch):
    """Rings of window + 3 slots, so tiny models reach past them within a few dozen tokens."""
    monkeypatch.setattr(gptkit.model, "RING_SLACK", 3)


def test_a_local_layers_cache_is_a_ring_of_the_window_and_global_layers_keep_everything(small_rings):
    config = local_model(window=4, pattern="LG", block_size=64).config
    cache = KVCache(config, 1, 64, "cpu")
    assert [k.shape[2] for k in cache.k] == [7, 64, 64]  # the last layer stays global
    assert [cache.is_ring(layer) for layer in range(3)] == [True, False, False]
    assert cache.nbytes() == 2 * (7 + 64 + 64) * config.n_embd * 4  # keys and values, float32


@pytest.mark.parametrize("preset", ["gpt2", "modern"])
def test_the_ring_matches_the_full_forward_pass(preset, small_rings):
    model = local_model(preset, window=5, pattern="LG", block_size=64)
    idx = torch.randint(0, 64, (2, 64))
    full = model(idx)
    cache = KVCache(model.config, 2, 64, "cpu")
    assert cache.is_ring(0)
    pieces = [model(idx[:, :7], kv_cache=cache), model(idx[:, 7:19], kv_cache=cache)]  # prefill, then more than a ring's worth
    pieces += [model(idx[:, t:t + 1], kv_cache=cache) for t in range(19, 50)]  # one token at a time, round the ring many times
    pieces.append(model(idx[:, 50:], kv_cache=cache))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)


def test_rewinding_within_the_slack_keeps_the_ring_and_further_back_prefills_again(small_rings):
    model = local_model(window=4, pattern="LG", block_size=64)
    ids = torch.randint(0, 64, (40,)).tolist()
    engine = Engine(model)

    def check(prompt, reused):
        logits = engine.prefill(prompt)
        assert engine.last_prefill["reused"] == reused
        torch.testing.assert_close(logits, model(torch.tensor([prompt]))[:, -1], rtol=0, atol=1e-5)

    check(ids[:30], 0)
    check(ids[:27] + [1, 2, 3], 27)  # back 3 tokens: the ring of 7 (positions 23-29) still holds the 4 keys before 27
    check(ids[:30], 27)
    check(ids[:26] + [5, 6], 0)  # back 4: position 22's key was overwritten by 29's, so the cache starts again
    check(ids[:26] + [5, 6, 7, 8, 9], 28)  # the next turn: no rewind
    check(ids[:3] + [9], 0)  # near the start the window reaches back to position 0, long overwritten


def test_generation_beams_and_chat_edits_through_the_ring_equal_fresh_prefills(bytes_tok, small_rings):
    model = local_model(window=4, pattern="LG", block_size=96)
    prompt = [3, 9, 4, 1, 7, 7, 2]
    ids = list(prompt)
    for _ in range(40):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert list(Engine(model).generate(prompt, 40, temperature=0)) == ids[len(prompt):]
    ring_best = beam_search(model, [5, 6, 7], beam_size=3, max_new_tokens=30)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gptkit.model, "RING_SLACK", 1000)  # no rings: full buffers under the band mask
        assert beam_search(model, [5, 6, 7], beam_size=3, max_new_tokens=30) == ring_best
    model = chat_model(bytes_tok, block_size=160, window=8, attn_pattern="LG")
    session = ChatSession(model, bytes_tok, greedy(max_new_tokens=10))
    assert session.engine.cache.is_ring(0)
    for text in ("hello there", "and again", "a third turn"):
        reply = "".join(session.respond(text))
        assert reply == fresh_reply(model, bytes_tok, history(session), greedy(max_new_tokens=10))
    for edit in (session.retry, lambda: (session.undo(), session.respond("something else"))[1]):
        reply = "".join(edit())
        assert reply == fresh_reply(model, bytes_tok, history(session), greedy(max_new_tokens=10))


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="torch.compile on a CPU needs a C++ compiler")
def test_the_compiled_decode_step_goes_round_the_ring_in_one_graph(small_rings):
    model = local_model(window=4, pattern="LG", block_size=40)
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):
            engine = Engine(model, compile=True)
            assert engine.cache.is_ring(0)
            for prompt, n in [([3, 17, 5, 40, 22], 50), ([1, 2], 10)]:  # 50 tokens run past the context of 40
                assert list(engine.generate(prompt, n, temperature=0)) == list(Engine(model).generate(prompt, n, temperature=0))
    finally:
        torch._dynamo.reset()


def test_a_checkpoint_keeps_the_pattern_and_resumes(tmp_path, data_dir):
    out = tmp_path / "out"
    train(tiny_run(out, data_dir, max_iters=2, eval_interval=2, block_size=32, window=4, attn_pattern="LG"))
    ckpt = load_checkpoint(out / LAST)
    assert ckpt["model_config"]["window"] == 4 and ckpt["model_config"]["attn_pattern"] == "LG"
    model, _ = build_model(ckpt)
    assert model.config.layer_window(0) == 4 and model.config.layer_window(1) == 0
    train(tiny_run(out, data_dir, max_iters=4, eval_interval=2, block_size=32, window=4, attn_pattern="LG"))
    assert load_checkpoint(out / LAST)["step"] == 4
    with pytest.raises(UsageError, match=r"different model \(attn_pattern, window differ\)"):
        train(tiny_run(out, data_dir, max_iters=6, eval_interval=2, block_size=32))


def test_a_windowed_model_exports_in_gptkits_layout_and_loads_back(tmp_path, bytes_tok):
    from export import export
    from gptkit.hf import from_pretrained
    model = tiny_model("gpt2", vocab_size=bytes_tok.n_vocab, block_size=32, n_layer=2, window=4, attn_pattern="LG")
    save_checkpoint(tmp_path / "model.pt", model, bytes_tok)
    assert export(tmp_path / "model.pt", tmp_path / "exported") == "gptkit"  # GPT2LMHeadModel has no banded layers
    idx = torch.randint(0, bytes_tok.n_vocab, (1, 32))
    assert torch.equal(from_pretrained(tmp_path / "exported")(idx), model(idx))


@pytest.mark.parametrize("options, fragment", [
    ({"window": 4, "attn_pattern": "LXG"}, "may hold only L (local) and G (global)"),
    ({"window": 4, "attn_pattern": "LGLGLG"}, "names more layers than the model's 4"),
    ({"window": 4, "attn_pattern": ""}, "a window needs an L in the pattern"),
    ({"attn_pattern": "LG"}, "local layers (L) need a window"),
])
def test_bad_sparse_settings_are_one_line(options, fragment):
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        model_config(TrainConfig(n_layer=4, **options), 256)


@pytest.mark.parametrize("options, layout", [
    ({}, ("", 0)),  # modern below 2,048 tokens: dense
    ({"block_size": 2048}, ("LLLG", 256)),
    ({"block_size": 4096, "n_layer": 12}, ("LLLG", 256)),  # read cyclically: LLLG LLLG LLLG
    ({"block_size": 2048, "n_layer": 2}, ("LG", 256)),  # fewer layers than the pattern: the last one stays global
    ({"block_size": 2048, "n_layer": 1}, ("", 0)),
    ({"block_size": 4096, "preset": "gpt2"}, ("", 0)),  # GPT-2's layout stays dense
    ({"window": 64}, ("LLLG", 64)),  # a window alone asks for the local pattern
    ({"block_size": 4096, "attn_pattern": ""}, ("", 0)),  # empty: dense, whatever the context
    ({"block_size": 4096, "attn_pattern": "LG", "window": 32}, ("LG", 32)),
])
def test_auto_picks_the_measured_pattern_for_long_contexts(options, layout):
    config = model_config(TrainConfig(**options), 256)
    assert (config.attn_pattern, config.window) == layout


def test_a_negative_window_is_refused_by_the_option_parser():
    from gptkit.options import parse_options
    with pytest.raises(UsageError, match="--window=-1 must be in"):
        parse_options(TrainConfig, ["--window=-1"], description="")


def test_the_model_builds_for_every_layer_count():
    for n_layer in range(1, 5):
        GPT(GPTConfig(n_layer=n_layer, n_head=2, n_embd=16, block_size=16, vocab_size=32, window=2, attn_pattern="L"))


@pytest.mark.slow  # 8 s of CI's 15 minutes; the patterns it compares are tested above
def test_the_benchmark_prints_quality_speed_memory_and_chat_and_its_final_line(tmp_path, data_dir):
    tiny = ["--n_layer=4", "--n_head=2", "--n_embd=32", f"--data_dir={data_dir}", "--tokenizer=bytes", "--eval_tokens=512", "--device=cpu",
            "--window=16", "--runs=LG:8", f"--work_dir={tmp_path}", "--quality_context=48", "--quality_steps=2", "--quality_batch=2",
            "--speed_contexts=48,96", "--speed_steps=1", "--speed_repeats=1", "--memory_context=256", "--chat_layers=4", "--chat_heads=2",
            "--chat_width=64", "--chat_context=256", "--chat_turns=3", "--turn_tokens=20", "--chat_repeats=1"]
    result = run_script("bench/sparse_attention.py", *tiny)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for label in ("dense:", "LLLG:16:", "LG:8:"):
        assert figure(out, label, r": ([\d.]+) \([+-]") > 0  # bits per byte of each quality run
    assert figure(out, "context    96:", r"LLLG:16 ([\d,]+) ") > 0
    final = dict(kv.split("=") for kv in out.strip().splitlines()[-1].removeprefix("sparse_attention: ").split())
    assert final["pattern"] == "LLLG" and final["window"] == "16"
    assert float(final["bpb_dense"]) > 0 and float(final["bpb_pattern"]) > 0 and float(final["speedup_96"]) > 0
    assert float(final["cache_ratio"]) == round((32768 + 3 * (16 + 64)) / (4 * 32768), 3)  # one global layer, three rings
    assert 0 < float(final["chat_ttft_ratio"]) < 100
    assert "reproduce: python bench/sparse_attention.py --n_layer=4" in out


def test_the_benchmark_refuses_a_pattern_longer_than_the_model():
    assert_one_line_error(run_script("bench/sparse_attention.py", "--n_layer=2", "--parts=memory"), "LLLG", "names more layers")


@pytest.mark.parametrize("T, W", [(256, 32), (300, 100), (130, 7)])  # T not a multiple of FlexAttention's 128-token tiles too
def test_flexattentions_band_equals_the_band_mask(T, W):
    """The CUDA path's mask, checked here through FlexAttention's eager reference (forward only: no backward on a CPU)."""
    torch.manual_seed(T)
    q, k, v = (torch.randn(1, 2, T, 16) for _ in range(3))
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=band_mask(T, 0, W, "cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FlexAttention warns that its eager path is slow
        torch.testing.assert_close(flex_local_attention(q, k, v, W, compiled=False), reference, rtol=0, atol=1e-5)
