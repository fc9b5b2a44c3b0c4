"""The speed benchmarks: bench/generate.py and bench/train_throughput.py run on a CPU with tiny settings and print their
figures; our greedy tokens equal transformers' on the same weights; Engine(compile=True) decodes what eager decodes."""
import os
import re
import shutil

import pytest
import torch

from gptkit.engine import Engine
from gptkit.gguf_vocab import recover_merges
from gptkit.llamacpp_timing import stand_in_tokenizer
from helpers import run_script, tiny_model
from test_cli import assert_one_line_error

TINY_GPT2 = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--threads=1", "--repeats=1"]
TINY_TRAIN = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=2", "--steps=2", "--warmup_steps=1", "--threads=1"]


def figure(stdout, line_start, pattern):
    """The number `pattern` captures on the line that starts with `line_start`."""
    line = next((line for line in stdout.splitlines() if line.strip().startswith(line_start)), None)
    assert line is not None, f"no line starting with {line_start!r} in:\n{stdout}"
    found = re.search(pattern, line)
    assert found, f"{pattern!r} not in {line!r}"
    return float(found.group(1).replace(",", ""))


@pytest.mark.parametrize("script, options", [
    ("bench/generate.py", ["--prompt_tokens=", "--new_tokens=", "--compile=", "--size=", "--repeats=", "--dtypes=", "--hf_dtypes=", "--chat_dtype=",
                           "--threads=", "--chat_turns=", "--llamacpp_types="]),
    ("bench/train_throughput.py", ["--preset=", "--size=", "--block_size=", "--batch_size=", "--max_batch=", "--compile=", "--data_dir=", "--n_layer="]),
    ("bench/parallel.py", ["--steps=", "--layouts=", "--presets=", "--work_dir="]),
])
def test_help_lists_the_options(script, options):
    result = run_script(script, "--help")
    assert result.returncode == 0, result.stderr
    for name in options:
        assert name in result.stdout


def test_generate_bench_prints_speed_the_transformers_comparison_and_the_chat_reuse():
    result = run_script("bench/generate.py", *TINY_GPT2, "--prompt_tokens=12", "--new_tokens=10", "--dtypes=float32,mixed",
                        "--llamacpp_types=f32", "--chat_turns=3", "--turn_tokens=20", "--chat_context=128", "--chat_dtype=mixed")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("machine: ") and "torch " in out.splitlines()[0]
    for label in ("ours, float32:", "ours, mixed:"):
        assert figure(out, label, r"decode\s+([\d.]+) tokens/s") > 0
        assert figure(out, label, r"first token\s+([\d.]+) ms") > 0
    assert "greedy tokens, ours, mixed vs ours, float32: " in out
    if "transformers: not installed" not in out:
        for label in ("transformers, float32:", "transformers, bfloat16:"):
            assert figure(out, label, r"decode\s+([\d.]+) tokens/s") > 0
        same = next(line for line in out.splitlines() if line.startswith("ours, float32 vs transformers, float32:"))
        assert "greedy tokens identical (1 prompt x 10 tokens)" in same
        assert figure(out, "ours, float32 vs transformers, float32:", r"decode ([\d.]+)x") > 0
        assert figure(out, "fastest decode:", r": ([\d.]+)x") > 0
        assert "ours, mixed vs transformers" not in out  # transformers has no mixed precision to compare with
    # the chat turns: the first prefills everything, the third reuses the cached history, a fresh session re-prefills it all
    assert "chat: ChatSession in mixed" in out
    assert figure(out, "turn 1:", r"reused ([\d,]+)") == 0
    reused = figure(out, "turn 3:", r"reused ([\d,]+)")
    prefilled = figure(out, "turn 3:", r"prefilled ([\d,]+)")
    assert reused > 2 * 20 and prefilled < 20 + 12
    assert figure(out, "turn 3, history re-prefilled:", r"prefilled ([\d,]+)") == reused + prefilled
    assert "reproduce: python bench/generate.py " in out and "--prompt_tokens=12 --new_tokens=10" in out and "--chat_turns=3" in out
    assert "--dtypes=float32,mixed" in out
    last = out.splitlines()[-1]
    if "llama.cpp: llama-cpp-python is not installed" in out:
        assert last.startswith("decode_vs_llamacpp: ours=") and "llamacpp=none" in last
    else:
        assert figure(out, "llama.cpp, f32:", r"decode\s+([\d.]+) tokens/s") > 0
        assert re.fullmatch(r"decode_vs_llamacpp: ours=[\d.]+ llamacpp=[\d.]+ ratio=[\d.]+ ours_dtype=\w+ llamacpp_type=f32", last), last


def test_the_stand_in_tokenizer_has_exactly_the_model_vocabulary():
    for n_vocab in (264, 300, 50257):
        tokenizer = stand_in_tokenizer(n_vocab)
        assert tokenizer.n_vocab == n_vocab and recover_merges(tokenizer.encoding._mergeable_ranks)[:1] in ([], [(b"\x00", b"\x00")])


def test_generate_bench_refuses_an_unknown_precision():
    assert_one_line_error(run_script("bench/generate.py", "--hf_dtypes=mixed"), "--hf_dtypes=mixed", "float16")


def test_generate_bench_reports_a_failed_compile_instead_of_crashing(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))  # what inductor calls to build its CPU kernels
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing cached from an earlier compile
    result = run_script("bench/generate.py", *TINY_GPT2, "--prompt_tokens=8", "--new_tokens=4", "--compile=true", "--dtypes=float32",
                        "--transformers=false", "--llamacpp=false", "--chat_turns=0")
    assert result.returncode == 0, result.stderr
    assert "ours, float32, compiled:     compile: failed (" in result.stdout
    assert figure(result.stdout, "ours, float32:", r"decode\s+([\d.]+) tokens/s") > 0
    assert "reproduce: " in result.stdout


@pytest.mark.parametrize("extra", [[], ["--preset=modern", "DATA"]])
def test_train_throughput_bench_prints_tokens_per_second_and_memory(extra, data_dir):
    extra = [f"--data_dir={data_dir}" if e == "DATA" else e for e in extra]
    result = run_script("bench/train_throughput.py", *TINY_TRAIN, *extra)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("machine: ")
    assert f"model: {'modern' if extra else 'gpt2'} preset, 2 layers x 32 wide" in out
    assert figure(out, "eager:", r"\| ([\d,]+) tokens/s") > 0
    assert figure(out, "eager:", r"peak memory ([\d.]+) GiB") > 0
    assert "batch 2 x 32" in out and "MFU n/a" in out  # no GPU: no peak FLOP/s to compare with
    assert "compiled:" not in out  # --compile=auto measures eager only on a CPU
    if extra:
        assert f"random windows of {data_dir}" in out and "vocabulary 320" in out  # the bytes tokenizer's 264 ids, padded to 64
    assert "reproduce: python bench/train_throughput.py " in out and "--steps=2" in out


def test_our_greedy_tokens_equal_transformers_on_the_same_weights():
    pytest.importorskip("transformers")
    from bench.generate import time_ours, transformers_greedy, transformers_twin

    model = tiny_model("gpt2", scale=0.5, vocab_size=50257, block_size=64, n_embd=32)
    twin = transformers_twin(model)
    engine = Engine(model)
    for first in range(3):
        prompt = [first, 17, 5, 40, 22, 9000, 31]
        ours, ttft, rate = time_ours(engine, prompt, 20)
        assert ours == transformers_greedy(twin, prompt, 20)
        assert len(ours) == 20 and len(set(ours)) > 1 and ttft > 0 and rate > 0


def test_transformers_twin_refuses_weights_it_does_not_take():
    pytest.importorskip("transformers")
    from bench.generate import transformers_twin

    model = tiny_model("modern", vocab_size=64, block_size=16)  # RMSNorm, no biases: not GPT-2's layout
    with pytest.raises(RuntimeError, match="did not take our weights"):
        transformers_twin(model)


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="torch.compile on a CPU needs a C++ compiler")
def test_compiled_decoding_equals_eager_in_one_graph_for_every_position():
    model = tiny_model("gpt2", scale=0.5, vocab_size=48, block_size=32, n_embd=32)
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):  # a new position must not compile a new graph
            engine = Engine(model, compile=True)
            runs = [([3, 17, 5, 40, 22], 60), ([1, 2], 10)]  # 60 tokens run past the context of 32, shifting it
            for prompt, n in runs:
                assert list(engine.generate(prompt, n, temperature=0)) == list(Engine(model).generate(prompt, n, temperature=0))
    finally:
        torch._dynamo.reset()
