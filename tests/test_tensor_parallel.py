"""Tensor parallelism (gptkit/tensor_parallel.py) through torchrun on the CPU (gloo): each layout trains the weights one
process trains on the same global batch, its single-file checkpoint resumes in another layout and samples in one
process, and layouts that cannot work (tensor or pipeline parallel) fail every rank in one line."""
import re
import shutil

import pytest
import torch

from gptkit.checkpoint import LAST, load_checkpoint
from gptkit.errors import UsageError
from gptkit.model import GPT, GPTConfig
from gptkit.tensor_parallel import check_layout, from_stored, local_model, qkv_order, to_stored
from helpers import run_script
from test_distributed import assert_same_weights, finish, step_losses, tiny_args, torchrun
from test_resilience import tiny_run
from train import train

# Float sums split across ranks round differently: losses agree to 1e-6 (the issue asks 1e-5); AdamW's division by the
# root of tiny second moments makes a few weights differ by up to ~4e-5 after 12 steps.
LOSS_TOL, WEIGHT_TOL = 1e-5, 1e-4


def tp_args(data_dir, out_dir, **overrides):
    return tiny_args(data_dir, out_dir, **{"n_head": 4, **overrides})


def one_process(out_dir, data_dir, **overrides):
    return train(tiny_run(out_dir, data_dir, **{"n_head": 4, "batch_size": 4, "grad_accum": 2, "max_iters": 12, "eval_interval": 6,
                                                "optimizer": "adamw", "keep_last": 2, **overrides}))


def assert_same_run(got, expected):
    got_losses, expected_losses = step_losses(got), step_losses(expected)  # a resumed run logs the steps after its checkpoint
    assert got_losses and set(got_losses) <= set(expected_losses) and max(got_losses) == max(expected_losses)
    assert [got_losses[i] for i in sorted(got_losses)] == pytest.approx([expected_losses[i] for i in sorted(got_losses)], abs=LOSS_TOL)
    assert_same_weights(load_checkpoint(got / LAST)["model"], load_checkpoint(expected / LAST)["model"], atol=WEIGHT_TOL)


def memory_line_weights(stdout):
    return float(re.search(r"memory per device \(estimate\): weights ([\d.]+) MB", stdout).group(1))


@pytest.mark.parametrize("nproc, overrides", [
    (2, dict(preset="gpt2", optimizer="muon")),  # learned positions, tied embeddings; Muon orthogonalizes whole matrices
    pytest.param(2, dict(preset="modern", optimizer="adamw", pos_encoding="sinusoidal"), marks=pytest.mark.slow),  # 11 s of CI's 15 minutes
    (4, dict(preset="modern", optimizer="muon", parallel="fsdp", activation_checkpointing=True)),  # FSDP2 x TP2, rotary positions
])
def test_a_tensor_parallel_layout_trains_the_weights_of_one_process(tmp_path, data_dir, nproc, overrides):
    one = tmp_path / "one"
    one_process(one, data_dir, **{k: v for k, v in overrides.items() if k not in ("parallel",)})
    split = tmp_path / "split"
    code, stdout, stderr = finish(torchrun(tp_args(data_dir, split, tp=2, **overrides), nproc=nproc), timeout=180)
    assert code == 0, stderr[-3000:]
    layout = f"{nproc} processes: tensor parallel 2 x {overrides.get('parallel', 'ddp')} {nproc // 2}"
    assert layout in stdout and stdout.count("training on cpu") == 1
    assert "redistributing" not in stderr  # torch's warning about gathering in two steps is quieted
    assert_same_run(split, one)
    assert load_checkpoint(split / LAST)["loader"] == load_checkpoint(one / LAST)["loader"]


def test_a_tensor_parallel_checkpoint_resumes_in_one_process_and_back_and_samples(tmp_path, data_dir, capsys):
    one = tmp_path / "one"
    one_process(one, data_dir, n_embd=64)
    alone = capsys.readouterr().out
    split = tmp_path / "split"
    code, stdout, stderr = finish(torchrun(tp_args(data_dir, split, tp=2, keep_last=2, n_embd=64, checkpoint_format="single")))
    assert code == 0, stderr[-3000:]
    assert memory_line_weights(stdout) < 0.7 * memory_line_weights(alone)  # each rank holds half of the blocks' matrices

    # saved at tp=2, resumed in one process: steps 7-12 as the straight run
    to_one = tmp_path / "to_one"
    to_one.mkdir()
    shutil.copy(split / "ckpt_0000006.pt", to_one / LAST)
    one_process(to_one, data_dir, n_embd=64)
    assert_same_run(to_one, one)

    # saved by one process, resumed at tp=2
    to_split = tmp_path / "to_split"
    to_split.mkdir()
    shutil.copy(one / "ckpt_0000006.pt", to_split / LAST)
    code, stdout, stderr = finish(torchrun(tp_args(data_dir, to_split, tp=2, n_embd=64)))
    assert code == 0, stderr[-3000:]
    assert f"resuming from {to_split / LAST} at step 6" in stdout
    assert_same_run(to_split, one)

    result = run_script("sample.py", f"--ckpt={split}", "--max_new_tokens=20", "--prompt=the cat", "--device=cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("the cat") and len(result.stdout.strip()) > len("the cat")


@pytest.mark.parametrize("overrides, message", [
    pytest.param(dict(tp=3), "error: --tp=3 splits each copy of the model over 3 processes, which does not divide the 2", marks=pytest.mark.slow),
    (dict(tp=2, n_head=3, n_embd=48), "error: --tp=2 splits attention by heads, and n_head=3 is not a multiple of 2"),
    (dict(pp=2, n_layer=1), "error: --pp=2 with --pp_schedule=1f1b makes 2 stages, more than the model's n_layer=1 blocks"),
    pytest.param(dict(pp=2, grad_accum=2, parallel="fsdp"), "error: --pp=2 composes with --parallel=ddp", marks=pytest.mark.slow),
])
def test_layouts_that_cannot_work_fail_every_rank_in_one_line(tmp_path, data_dir, overrides, message):
    code, _, stderr = finish(torchrun(tiny_args(data_dir, tmp_path / "out", **overrides)), timeout=60)
    assert code != 0
    assert stderr.count(message) == 2, stderr[-2000:]  # each rank says it, neither hangs
    assert 'train.py", line' not in stderr


@pytest.mark.parametrize("split, flags", [(dict(tp=2), "--tp=2"), (dict(pp=2), "--pp=2"), (dict(pp=2, tp=2), "--pp=2 --tp=2")])
def test_a_split_model_without_torchrun_or_with_an_objective_it_cannot_split_is_refused(tmp_path, data_dir, split, flags):
    with pytest.raises(UsageError, match=rf"{flags} splits the model across processes: run it under torchrun"):
        train(tiny_run(tmp_path / "out", data_dir, **split, parallel="auto"))
    with pytest.raises(UsageError, match=rf"{flags} trains with --objective next_token or chat_sft; --objective=dpo"):
        train(tiny_run(tmp_path / "out", data_dir, **split, objective="dpo"))


def test_the_fused_query_key_value_rows_are_reordered_by_rank_and_back():
    n_embd, tp = 8, 2
    rows = torch.arange(3 * n_embd)  # q 0-7, k 8-15, v 16-23
    order = qkv_order(n_embd, tp)
    assert order.tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]  # rank 0's heads, then rank 1's
    weight = torch.randn(3 * n_embd, n_embd)
    name = "transformer.h.0.attn.c_attn.weight"
    assert torch.equal(to_stored(name, from_stored(name, weight, tp), tp), weight)
    assert torch.equal(from_stored("transformer.h.0.mlp.c_fc.weight", weight, tp), weight)  # only c_attn is reordered
    assert torch.equal(from_stored(name, rows, 1), rows)


def test_a_rank_s_share_of_the_model_runs_with_its_heads():
    config = GPTConfig.from_preset("modern", n_layer=1, n_head=4, n_embd=32, block_size=16, vocab_size=64)
    share = local_model(GPT(config), 2)
    assert share.transformer.h[0].attn.c_attn.weight.shape == (48, 32) and share.lm_head.weight.shape == (32, 32)
    assert share(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 16, 32)  # two heads of size 8, half the vocabulary
    assert check_layout(config, 2) is None
    assert "n_head=4 is not a multiple of 3" in check_layout(config, 3)
    assert "its 64 entries are not a multiple of 3" in check_layout(GPTConfig.from_preset("modern", n_head=3, n_embd=48, vocab_size=64), 3)
