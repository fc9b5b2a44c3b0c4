"""The scripts as a user runs them from the repo root: help, one-line errors, and prepare -> train -> sample."""
import subprocess
import sys

import pytest

from gptkit.checkpoint import LAST, load_checkpoint
from helpers import REPO, run_script


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("script, options", [
    ("train.py", ["--n_layer=", "--resume=", "--optimizer=", "one of: adamw, muon", "CONFIG"]),
    ("sample.py", ["--ckpt=", "--prompt=", "--temperature=", "--top_k="]),
    ("data/prepare.py", ["--tokenizer=", "--val_fraction=", "--dataset=", "INPUTS"]),
])
def test_help_lists_the_options(script, options):
    result = run_script(script, "--help")
    assert result.returncode == 0, result.stderr
    for option in options:
        assert option in result.stdout
    assert result.stderr == ""


def test_help_into_a_pipe_that_closed_early_is_no_traceback():
    """`python train.py --help | head -1`: the reader is gone before the help is written (train.py imports torch first)."""
    process = subprocess.Popen([sys.executable, "train.py", "--help"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141 and stderr == ""


def test_train_unknown_option_is_one_line_with_a_suggestion():
    assert_one_line_error(run_script("train.py", "--n_layers=2"), "did you mean --n_layer")


def test_train_wrong_type_is_one_line():
    assert_one_line_error(run_script("train.py", "--max_iters=lots"), "--max_iters=lots", "expected int")


def test_sample_missing_checkpoint_is_one_line(tmp_path):
    missing = tmp_path / "nowhere.pt"
    assert_one_line_error(run_script("sample.py", f"--ckpt={missing}"), str(missing), "does not exist")


def test_sample_folder_without_checkpoint_is_one_line(tmp_path):
    assert_one_line_error(run_script("sample.py", f"--ckpt={tmp_path}"), "no checkpoint in", "train.py")


def test_prepare_train_sample_pipeline(tmp_path, corpus_file):
    data, out = tmp_path / "data", tmp_path / "out"
    prepared = run_script("data/prepare.py", corpus_file, "--tokenizer=bytes", f"--out_dir={data}", "--val_fraction=0.1")
    assert prepared.returncode == 0, prepared.stderr

    trained = run_script("train.py", f"--data_dir={data}", f"--out_dir={out}", "--n_layer=2", "--n_head=2", "--n_embd=32",
                         "--block_size=32", "--batch_size=8", "--max_iters=30", "--eval_interval=10", "--eval_tokens=2048",
                         "--warmup_iters=5", "--lr=0.01", "--sample_tokens=20", "--sample_prompt=the ", "--device=cpu", "--threads=1")
    assert trained.returncode == 0, trained.stderr
    assert "step 30: val loss" in trained.stdout
    assert "nats per token: gap " in trained.stdout  # the end's train/validation gap
    assert "muon" in trained.stdout  # config/default.py applied underneath the overrides
    ckpt = load_checkpoint(out / LAST)
    assert ckpt["step"] == 30
    assert ckpt["model_config"]["n_embd"] == 32 and ckpt["model_config"]["vocab_size"] == 320

    sampled = run_script("sample.py", f"--ckpt={out}", "--prompt=the cat ", "--max_new_tokens=20", "--device=cpu", "--num_samples=2")
    assert sampled.returncode == 0, sampled.stderr
    assert "Traceback" not in sampled.stderr
    samples = [s for s in sampled.stdout.split("--- sample ")[1:]]
    assert len(samples) == 2
    for sample in samples:
        body = sample.split("---\n", 1)[1]
        assert body.startswith("the cat ")
        assert len(body) > len("the cat ")

    again = run_script("sample.py", f"--ckpt={out}", "--prompt=the cat ", "--max_new_tokens=20", "--device=cpu", "--num_samples=2")
    assert again.stdout == sampled.stdout  # the default seed makes samples reproducible


def test_sample_refuses_negative_settings(tmp_path):
    assert_one_line_error(run_script("sample.py", f"--ckpt={tmp_path}", "--temperature=-1"), "--temperature")
