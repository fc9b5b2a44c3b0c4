"""Several processes through torchrun (CPU, gloo): the same weights as one process with the same global batch, exact
resume, consolidated checkpoints that load in one process, and failures that end the job instead of hanging it."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from gptkit.checkpoint import LAST, load_checkpoint
from helpers import REPO, run_script
from test_resilience import tiny_run, wait_for
from train import train


def tiny_args(data_dir, out_dir, **overrides):
    """The command-line form of tiny_run, with a global batch of 2 micro-batches of 4 sequences."""
    cfg = dict(out_dir=out_dir, data_dir=data_dir, tokenizer="bytes", n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4,
               grad_accum=2, max_iters=12, eval_interval=6, eval_tokens=1024, log_interval=1, warmup_iters=4, lr=1e-2,
               sample_tokens=0, device="cpu", threads=1, seed=3, optimizer="adamw")
    cfg.update(overrides)
    return [f"--{k}={v}" for k, v in cfg.items()]


def torchrun(args, nproc=2, **popen):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "train.py", *args]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(proc, timeout=90):
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout, stderr


def step_losses(out_dir):
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["iter"]: r["loss"] for r in records if "loss" in r}


def assert_same_weights(got, expected, atol=1e-5):
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("parallel, optimizer, grad_accum", [
    ("ddp", "muon", 2),  # each rank runs one of the two micro-batches
    ("fsdp", "adamw", 2),
    ("fsdp", "muon", 1),  # one micro-batch, each rank its half of the rows; Muon orthogonalizes whole matrices
])
def test_two_processes_train_the_weights_of_one_with_the_same_global_batch(tmp_path, data_dir, parallel, optimizer, grad_accum):
    one = tmp_path / "one"
    train(tiny_run(one, data_dir, batch_size=4, grad_accum=grad_accum, max_iters=12, eval_interval=6, optimizer=optimizer))
    two = tmp_path / "two"
    code, stdout, stderr = finish(torchrun(tiny_args(data_dir, two, parallel=parallel, optimizer=optimizer, grad_accum=grad_accum,
                                                     activation_checkpointing=parallel == "fsdp")))
    assert code == 0, stderr[-2000:]
    assert f"{parallel} over 2 processes" in stdout and stdout.count("training on cpu") == 1  # rank 1 stays quiet
    expected, got = load_checkpoint(one / LAST), load_checkpoint(two / LAST)  # consolidated: the single-process format
    assert got["step"] == 12
    assert_same_weights(got["model"], expected["model"])
    assert got["loader"] == expected["loader"]  # the data position: the same batches were drawn
    assert [len(o["state"]) for o in got["optimizers"]] == [len(o["state"]) for o in expected["optimizers"]]
    one_losses, two_losses = step_losses(one), step_losses(two)
    assert sorted(two_losses) == list(range(1, 13))  # the global mean, logged once
    assert [two_losses[i] for i in range(1, 13)] == pytest.approx([one_losses[i] for i in range(1, 13)], abs=1e-5)


@pytest.mark.slow  # 13 s of CI's 15 minutes; FSDP's training and its parity with one process are tested above
def test_fsdp_checkpoint_samples_in_one_process_and_continues_at_another_world_size(tmp_path, data_dir):
    out = tmp_path / "out"
    code, _, stderr = finish(torchrun(tiny_args(data_dir, out, parallel="fsdp", max_iters=6)))
    assert code == 0, stderr[-2000:]
    result = run_script("sample.py", f"--ckpt={out}", "--max_new_tokens=20", "--prompt=the cat", "--device=cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("the cat") and len(result.stdout.strip()) > len("the cat")
    # The same checkpoint continues in a single process: same batches (the sampler's state), float rounding aside.
    train(tiny_run(out, data_dir, batch_size=4, grad_accum=2, max_iters=6, eval_interval=6, optimizer="adamw", resume="true"))
    reference = tmp_path / "reference"
    train(tiny_run(reference, data_dir, batch_size=4, grad_accum=2, max_iters=6, eval_interval=6, optimizer="adamw"))
    assert_same_weights(load_checkpoint(out / LAST)["model"], load_checkpoint(reference / LAST)["model"])


@pytest.mark.slow  # 29 s of CI's 15 minutes; stopping and exact resume of one process are tested in test_resilience.py
def test_a_stopped_two_process_run_resumes_exactly(tmp_path, data_dir):
    STEPS = 100  # enough that SIGTERM, sent once the first checkpoint is there, lands mid-run
    straight = tmp_path / "straight"
    code, _, stderr = finish(torchrun(tiny_args(data_dir, straight, max_iters=STEPS, eval_interval=5, eval_tokens=256)))
    assert code == 0, stderr[-2000:]

    stopped = tmp_path / "stopped"
    proc = torchrun(tiny_args(data_dir, stopped, max_iters=STEPS, eval_interval=5, eval_tokens=256))
    wait_for(lambda: (stopped / LAST).exists())
    proc.send_signal(signal.SIGTERM)  # to torchrun, as a scheduler would: it passes SIGTERM to every rank
    code, _, stderr = finish(proc)
    assert code != 0
    assert stderr.count("stopped by SIGTERM") == 1, stderr[-2000:]  # all ranks stopped together; rank 0 said so
    saved = load_checkpoint(stopped / LAST)["step"]
    assert 5 <= saved < STEPS

    code, stdout, stderr = finish(torchrun(tiny_args(data_dir, stopped, max_iters=STEPS, eval_interval=5, eval_tokens=256)))
    assert code == 0, stderr[-2000:]
    assert f"resuming from {stopped / LAST} at step {saved}" in stdout
    expected, got = step_losses(straight), step_losses(stopped)
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))
    assert [got[i] for i in range(1, STEPS + 1)] == [expected[i] for i in range(1, STEPS + 1)]  # exactly, step for step
    assert_same_weights(load_checkpoint(stopped / LAST)["model"], load_checkpoint(straight / LAST)["model"], atol=0)


def test_options_that_cannot_work_fail_every_rank_in_one_line(tmp_path, data_dir):
    code, _, stderr = finish(torchrun(tiny_args(data_dir, tmp_path / "out", grad_accum=3, batch_size=3)), timeout=60)
    assert code != 0
    assert "error: a global batch of --batch_size=3 x --grad_accum=3 sequences cannot be shared evenly by 2 processes" in stderr
    assert 'train.py", line' not in stderr  # no worker traceback


def test_a_rank_that_fails_mid_run_ends_the_job_instead_of_hanging_it(tmp_path, data_dir):
    out = tmp_path / "out"
    (out / "ckpt_0000006.pt").mkdir(parents=True)  # rank 0 cannot write its checkpoint at step 6; rank 1 trains on
    started = time.time()
    code, _, stderr = finish(torchrun(tiny_args(data_dir, out)), timeout=120)
    assert code != 0 and time.time() - started < 100
    assert "IsADirectoryError" in stderr or "Is a directory" in stderr


@pytest.mark.slow  # two short training runs (22 s); the DDP path itself is tested above
def test_ddp_overhead_bench_compares_the_two_runs(tmp_path, data_dir):
    replaced = ("--out_dir", "--max_iters", "--eval_interval", "--log_interval", "--sample_tokens")
    args = [a for a in tiny_args(data_dir, tmp_path / "unused") if not a.startswith(replaced)]
    result = run_script("bench/ddp_overhead.py", "--steps=30", f"--work_dir={tmp_path / 'bench'}", *args)
    assert result.returncode == 0, result.stderr
    assert "plain:" in result.stdout and "ddp, 1 process:" in result.stdout and "reproduce: python bench/ddp_overhead.py" in result.stdout
    overhead = float(result.stdout.split("ddp overhead: ")[1].split("%")[0])
    assert -100 < overhead < 100
    assert (tmp_path / "bench" / "ddp" / "last.pt").is_file()


def test_a_global_batch_is_shared_by_micro_batches_or_by_rows_and_refused_in_one_line_otherwise(tmp_path):
    import numpy as np

    from gptkit.distributed import RankBatches, batch_split
    from gptkit.errors import UsageError
    from gptkit.train_config import TrainConfig, accumulation_for, check_config

    assert batch_split(TrainConfig(batch_size=32, grad_accum=4), 4) == "batches"
    assert batch_split(TrainConfig(batch_size=32, grad_accum=1), 4) == "rows"  # the defaults under torchrun
    with pytest.raises(UsageError, match="cannot be shared evenly by 4 processes: make --grad_accum or --batch_size a multiple of 4"):
        batch_split(TrainConfig(batch_size=6, grad_accum=1), 4)
    with pytest.raises(UsageError, match="make --grad_accum a multiple of 2"):
        batch_split(TrainConfig(batch_size=8, grad_accum=1, objective="grpo"), 2)

    class Counting:  # a sampler whose batches say which draw they are
        def __init__(self):
            self.drawn = 0

        def next_batch(self):
            self.drawn += 1
            return np.arange(8)[:, None] + 100 * self.drawn, np.arange(8)[:, None]

    shares = [RankBatches(Counting(), rank, 4, rows=True).next_batch() for rank in range(4)]
    assert np.concatenate([x for x, _ in shares]).ravel().tolist() == list(range(100, 108))  # the one draw, split in order
    assert [len(y) for _, y in shares] == [2, 2, 2, 2]
    assert RankBatches(Counting(), 1, 2).next_batch()[0][0, 0] == 200  # whole micro-batches: rank 1 keeps the second draw

    assert accumulation_for(524288, 16, 1024) == 32
    cfg = TrainConfig(out_dir=str(tmp_path / "out"), batch_tokens=8192, batch_size=32, block_size=128)
    check_config(cfg)
    assert cfg.grad_accum == 2
    with pytest.raises(UsageError, match=r"--batch_tokens=5,000 is not a whole number of micro-batches .* 4,096 tokens; use --batch_tokens=4096 or 8192"):
        accumulation_for(5000, 32, 128)
