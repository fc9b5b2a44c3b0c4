"""Generation precisions (gptkit/precision.py): what "auto" picks, what "mixed" computes, and that the scripts take --dtype."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit import precision
from gptkit.checkpoint import save_checkpoint
from gptkit.engine import Engine, beam_search
from gptkit.precision import for_generation, resolve_dtype
from gptkit.weight_formats import HalfWeightLinear, Int8WeightLinear
from helpers import run_script, tiny_model
from test_cli import assert_one_line_error


@pytest.mark.parametrize("device, expected", [("cuda", "bfloat16"), ("cuda:1", "bfloat16"), ("mps", "float32"), ("cpu", "float32")])
def test_auto_picks_by_device_and_a_small_model_stays_float32(monkeypatch, device, expected):
    monkeypatch.setattr(precision, "decode_times", lambda shapes: pytest.fail("a small model is not measured"))
    assert resolve_dtype("auto", device, [(64, 32), (32, 64)]) == expected
    assert resolve_dtype("float16", device) == "float16"  # a named precision is taken as it is


@pytest.mark.parametrize("times, expected", [
    ({"float32": 10.0, "mixed": 8.0, "int8": 7.5}, "mixed"),  # int8 is not 10% faster than mixed
    ({"float32": 10.0, "mixed": 9.5, "int8": 8.9}, "int8"),  # mixed is not 10% faster than float32, int8 is
    ({"float32": 10.0, "mixed": 9.5, "int8": 9.2}, "float32"),
    ({"float32": 10.0, "mixed": 5.0, "int8": 4.0}, "int8"),
])
def test_auto_takes_a_less_exact_precision_only_when_it_is_10_percent_faster(times, expected):
    assert precision.pick(times) == expected


def test_auto_on_a_cpu_measures_once_per_machine_and_remembers(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(precision, "SMALL_MODEL_WEIGHTS", 0)
    shapes = [(96, 32), (32, 96)]
    times = precision.decode_times(shapes, repeats=1)  # the real measurement, on tiny layers
    assert set(times) == {"float32", "mixed", "int8"} and all(t > 0 for t in times.values())
    monkeypatch.setattr(precision, "decode_times", lambda shapes: {"float32": 3.0, "mixed": 2.0, "int8": 1.0})
    assert resolve_dtype("auto", "cpu", shapes) == "int8"
    assert "auto precision: " in capsys.readouterr().err
    remembered = tmp_path / "gptkit" / "auto_precision.json"
    assert list(json.loads(remembered.read_text()).values()) == ["int8"]
    measured = []
    monkeypatch.setattr(precision, "decode_times", lambda shapes: measured.append(shapes) or {"float32": 1.0, "mixed": 2.0, "int8": 3.0})
    assert resolve_dtype("auto", "cpu", shapes) == "int8" and not measured  # remembered
    assert resolve_dtype("auto", "cpu", [(96, 32)]) == "float32" and measured == [[(96, 32)]]  # other shapes: their own entry
    remembered.write_text("not json")  # a damaged file is measured afresh, not an error
    assert resolve_dtype("auto", "cpu", shapes) == "float32" and len(measured) == 2


def test_half_weight_linear_multiplies_one_row_in_float16_and_many_in_bfloat16():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    half = HalfWeightLinear(linear)
    one, many = torch.randn(1, 1, 64), torch.randn(2, 5, 64)
    expected_one = F.linear(one.half(), linear.weight.half(), linear.bias.half()).float()
    expected_many = F.linear(many.bfloat16(), linear.weight.bfloat16(), linear.bias.bfloat16()).float()
    assert half(one).dtype == torch.float32 and torch.equal(half(one), expected_one)
    assert torch.equal(half(many), expected_many)
    assert torch.allclose(half(one), linear(one), atol=5e-3) and torch.allclose(half(many), linear(many), atol=5e-2)
    no_bias = HalfWeightLinear(nn.Linear(64, 8, bias=False))
    assert no_bias.bias_f16 is None and no_bias(one).shape == (1, 1, 8)


def test_half_weight_linear_without_bfloat16_instructions_multiplies_many_rows_in_float32():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    half = HalfWeightLinear(linear, many_rows_bf16=False)
    many = torch.randn(2, 5, 64)
    assert half.weight_bf16 is None
    assert torch.equal(half(many), F.linear(many, linear.weight.half().float(), linear.bias.half().float()))


def test_int8_linear_rounds_each_weight_within_half_a_step_of_its_row_and_multiplies_close_to_float32():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    q = Int8WeightLinear(linear)
    step = linear.weight.abs().amax(dim=1, keepdim=True) / 127
    assert q.weight_int8.dtype == torch.int8 and q.weight_int8.abs().max() == 127
    assert torch.all((q.weight_int8.float() * q.scale[:, None] - linear.weight).abs() <= step / 2 + 1e-7)
    one, many = torch.randn(1, 1, 64), torch.randn(2, 5, 64)
    dequantized = F.linear(many, q.weight_int8.float()) * q.scale + linear.bias
    assert torch.allclose(q(many), dequantized, atol=1e-6)  # several rows: float32 products of the rounded weights
    assert q(one).shape == (1, 1, 48) and q(one).dtype == torch.float32
    assert torch.allclose(q(one), linear(one), atol=0.05)  # one row: the int8 kernel, bfloat16 input
    zero = Int8WeightLinear(nn.Linear(8, 4, bias=False))
    with torch.no_grad():
        zero.weight_int8.zero_()
    assert torch.equal(zero(torch.randn(1, 8)), torch.zeros(1, 4))
    odd = nn.Linear(24, 40)  # a width neither kernel reads whole (torch's gave inf here): the float32 path
    x = torch.randn(1, 24)
    assert torch.allclose(Int8WeightLinear(odd)(x), odd(x), atol=0.05)


@pytest.mark.parametrize("preset", ["gpt2", "modern"])
def test_int8_keeps_embeddings_norms_and_cache_in_float32_and_stays_close(preset):
    kwargs = dict(scale=0.1 if preset == "modern" else None, vocab_size=64, block_size=32, n_embd=32)
    model, reference = tiny_model(preset, **kwargs), tiny_model(preset, **kwargs)
    assert for_generation(model, "int8", "cpu") == "int8"
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    prompt = [3, 17, 5, 40, 22, 9, 31]
    engine, ref_engine = Engine(model), Engine(reference)
    close = lambda a, b: (a - b).abs().max() <= 0.05 * b.abs().max()  # 8-bit weights: within 5% of the logits' range
    assert close(engine.prefill(prompt), ref_engine.prefill(prompt))
    assert engine.cache.dtype == torch.float32
    for token in (7, 11, 13):
        assert close(engine.decode_step(token), ref_engine.decode_step(token))


@pytest.mark.parametrize("preset", ["gpt2", "modern"])
def test_mixed_keeps_activations_and_cache_in_float32_and_stays_close(preset):
    model = tiny_model(preset, scale=0.1 if preset == "modern" else None, vocab_size=64, block_size=32, n_embd=32)
    reference = tiny_model(preset, scale=0.1 if preset == "modern" else None, vocab_size=64, block_size=32, n_embd=32)
    assert for_generation(model, "mixed", "cpu") == "mixed"
    assert not any(isinstance(m, nn.Linear) for m in model.modules())  # the output layer too, tied or not
    assert all(p.dtype == torch.float32 for p in model.parameters())  # embeddings and norms
    prompt = [3, 17, 5, 40, 22, 9, 31]
    engine, ref_engine = Engine(model), Engine(reference)
    logits, ref_logits = engine.prefill(prompt), ref_engine.prefill(prompt)
    assert engine.cache.dtype == torch.float32 and logits.dtype == torch.float32
    assert torch.allclose(logits, ref_logits, atol=0.05)
    for token in (7, 11, 13):  # one-row steps take the float16 weights
        assert torch.allclose(engine.decode_step(token), ref_engine.decode_step(token), atol=0.05)
    tokens = beam_search(model, prompt, beam_size=3, max_new_tokens=6)  # several rows: the bfloat16 weights
    assert len(tokens) == 6 and all(0 <= t < 64 for t in tokens)


def test_float32_on_a_cpu_stores_linear_weights_transposed_with_the_same_values():
    model, reference = tiny_model("gpt2", vocab_size=64, block_size=32), tiny_model("gpt2", vocab_size=64, block_size=32)
    assert for_generation(model, "float32", "cpu") == "float32"
    for (name, p), ref in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p, ref), name
        if p.dim() == 2 and "wpe" not in name:  # linear weights (the tied embedding is the output layer's)
            assert p.stride() == (1, p.shape[0]), name
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    prompt = torch.tensor([[3, 17, 5, 40, 22]])
    assert torch.allclose(model(prompt), reference(prompt), atol=1e-5)
    other = tiny_model("gpt2", vocab_size=64, block_size=32)
    for_generation(other, "float32", "mps")  # elsewhere the layout is left alone
    assert all(p.is_contiguous() for p in other.parameters())


@pytest.mark.parametrize("name, dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16), ("float32", torch.float32)])
def test_whole_model_precisions_cast_weights_and_cache(name, dtype):
    model = tiny_model("gpt2", vocab_size=64, block_size=32)
    assert for_generation(model, name, "cpu") == name
    assert all(p.dtype == dtype for p in model.parameters())
    engine = Engine(model)
    assert engine.cache.dtype == dtype
    assert len(list(engine.generate([1, 2, 3], 5, temperature=0))) == 5


@pytest.fixture
def checkpoint(tmp_path, bytes_tok):
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_model("gpt2", vocab_size=bytes_tok.n_vocab, block_size=64, n_embd=32), bytes_tok)
    return path


def test_sample_and_chat_take_dtype(checkpoint):
    for dtype in ("float32", "mixed", "bfloat16", "int8"):
        result = run_script("sample.py", f"--ckpt={checkpoint}", "--prompt=ab", "--max_new_tokens=12", "--device=cpu", f"--dtype={dtype}",
                            "--temperature=0")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("ab") and len(result.stdout) > 3
    chat = run_script("chat.py", f"--ckpt={checkpoint}", "--dtype=mixed", "--max_new_tokens=5", input="hello\n")
    assert chat.returncode == 0 and "Traceback" not in chat.stderr, chat.stderr
    assert len(chat.stdout.strip().splitlines()) == 1  # one reply to the one message
    assert_one_line_error(run_script("sample.py", f"--ckpt={checkpoint}", "--dtype=int4"), "--dtype", "mixed")


def test_precision_bench_reports_speed_and_quality(checkpoint, tmp_path, corpus_text):
    text = tmp_path / "text.txt"
    text.write_text(corpus_text[:3000], encoding="utf-8")
    result = run_script("bench/precision.py", f"--ckpt={checkpoint}", f"--data={text}", "--windows=2", "--window=16", "--rows=4",
                        "--repeats=1", "--threads=1", "--matmul_layers=4")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("machine: ") and "against float32, 1 row: float32 T " in out and "against float32, 4 rows: " in out
    assert "GPT-2 small's first 4 linear layers (7.1M weights)" in out and ", int8 " in out
    lines = [line for line in out.splitlines() if " path:" in line]
    assert [line.split()[0] + " " + line.split()[1] for line in lines] == [
        f"{d} {p}" for d in ("float32", "bfloat16", "float16", "mixed", "int8") for p in ("prompt", "decode")]
    assert "top token as float32 100.00% | largest logit difference 0.0000" in lines[0]  # the reference against itself
    assert "reproduce: python bench/precision.py " in out and "--window=16" in out
    assert_one_line_error(run_script("bench/precision.py", f"--ckpt={checkpoint}", f"--data={text}", "--dtypes=mixed"), "--dtypes", "float32")
    assert_one_line_error(run_script("bench/precision.py", f"--ckpt={checkpoint}"), "--data is required")
