"""Training that survives: exact resume, preemption signals, kill -9 while saving, non-finite steps, bad data, fuzzed input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gptkit import optim
from gptkit.checkpoint import LAST, load_checkpoint
from gptkit.errors import UsageError
from gptkit.model import GPT
from gptkit.options import parse_options
from gptkit.shards import load_split, read_meta
from gptkit.signals import StopSignals, TrainingStopped
from gptkit.spike_guard import SpikeGuard
from gptkit.train_config import TrainConfig, check_config
from helpers import REPO
from train import train


def tiny_run(out_dir, data_dir, **overrides):
    base = dict(out_dir=str(out_dir), data_dir=str(data_dir), tokenizer="bytes", n_layer=2, n_head=2, n_embd=32, block_size=32,
                batch_size=8, max_iters=24, eval_interval=8, eval_tokens=1024, log_interval=1, warmup_iters=4, lr=1e-2,
                sample_tokens=0, device="cpu", threads=1, seed=3, resume="auto")
    return TrainConfig(**{**base, **overrides})


def step_losses(out_dir):
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["iter"]: r["loss"] for r in records if "loss" in r}


def stop_at(monkeypatch, stop_step):
    """Deliver SIGTERM to this process while step `stop_step` is in flight, as a scheduler would."""
    real = optim.lr_multiplier

    def lr_then_signal(step, cfg):
        if step == stop_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(step, cfg)

    monkeypatch.setattr(optim, "lr_multiplier", lr_then_signal)
    return real


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_stopped_and_resumed_run_has_bit_identical_losses(tmp_path, data_dir, monkeypatch, optimizer):
    straight = tmp_path / "straight"
    reference = train(tiny_run(straight, data_dir, optimizer=optimizer))

    stopped = tmp_path / "stopped"
    real = stop_at(monkeypatch, 13)
    with pytest.raises(TrainingStopped) as info:
        train(tiny_run(stopped, data_dir, optimizer=optimizer))
    assert info.value.signal_name == "SIGTERM" and info.value.step == 14  # the step in flight finished first
    assert load_checkpoint(stopped / LAST)["step"] == 14
    monkeypatch.setattr(optim, "lr_multiplier", real)
    resumed = train(tiny_run(stopped, data_dir, optimizer=optimizer))  # resume=auto picks up last.pt

    expected, got = step_losses(straight), step_losses(stopped)
    assert sorted(got) == sorted(expected) == list(range(1, 25))
    assert [got[i] for i in range(1, 25)] == [expected[i] for i in range(1, 25)]  # exactly, step for step
    for name, tensor in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


def test_resume_false_starts_over(tmp_path, data_dir):
    out = tmp_path / "out"
    train(tiny_run(out, data_dir, max_iters=8))
    train(tiny_run(out, data_dir, max_iters=8, resume="false", lr=5e-3))
    assert load_checkpoint(out / LAST)["train_config"]["lr"] == 5e-3
    assert sorted(step_losses(out)) == list(range(1, 9))  # a fresh metrics file, not appended


def test_keep_last_keeps_the_newest_checkpoints(tmp_path, data_dir):
    out = tmp_path / "out"
    train(tiny_run(out, data_dir, max_iters=24, eval_interval=4, keep_last=2))
    assert sorted(p.name for p in out.glob("ckpt_*.pt")) == ["ckpt_0000020.pt", "ckpt_0000024.pt"]
    assert os.path.samefile(out / LAST, out / "ckpt_0000024.pt") or (out / LAST).read_bytes() == (out / "ckpt_0000024.pt").read_bytes()


def scale_one_training_loss(monkeypatch, call, factor):
    """Multiply the training loss of the call-th training forward by factor; returns the call counter (to reset it)."""
    real_forward = GPT.forward
    calls = {"n": 0}

    def forward_with_one_scaled_loss(self, idx, targets=None, **kw):
        out = real_forward(self, idx, targets, **kw)
        if targets is not None and self.training and not idx.is_meta:  # a training step's, not the memory estimate's
            calls["n"] += 1
            if calls["n"] == call:
                return out * factor
        return out

    monkeypatch.setattr(GPT, "forward", forward_with_one_scaled_loss)
    return calls


def test_non_finite_loss_is_skipped_and_counted(tmp_path, data_dir, monkeypatch):
    scale_one_training_loss(monkeypatch, 5, float("nan"))
    model = train(tiny_run(tmp_path / "out", data_dir, max_iters=10))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if "skipped_steps" in r] == [0] * 4 + [1] * 6
    assert load_checkpoint(tmp_path / "out" / LAST)["skipped_steps"] == 1


def test_repeated_non_finite_gradients_stop_with_the_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
    out = tmp_path / "out"
    train(tiny_run(out, data_dir, max_iters=8))
    good = load_checkpoint(out / LAST)

    def nan_gradients(parameters, max_norm, *args, **kwargs):
        return torch.tensor(float("nan"))

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", nan_gradients)
    with pytest.raises(UsageError, match="training diverged: 3 steps in a row"):
        train(tiny_run(out, data_dir, max_iters=16, max_bad_steps=3))
    after = load_checkpoint(out / LAST)
    assert after["step"] == 8
    for name, tensor in good["model"].items():
        assert torch.equal(after["model"][name], tensor)


def test_spike_guard_flags_only_outliers_after_its_warmup():
    guard = SpikeGuard(threshold=4.0, warmup=10)
    losses = [3.0 + 0.05 * ((-1) ** i) for i in range(30)]
    assert not any(guard.is_spike(x) or guard.update(x) for x in losses)
    assert guard.is_spike(4.0) and not guard.is_spike(3.1)
    assert not SpikeGuard(threshold=0.0).is_spike(1e9)  # off by default
    fresh = SpikeGuard(threshold=4.0, warmup=10)
    assert not fresh.is_spike(1e9)  # no judgement before it has seen enough steps


def test_a_loss_spike_is_skipped_only_when_the_policy_is_on(tmp_path, data_dir, monkeypatch):
    calls = scale_one_training_loss(monkeypatch, 30, 10)
    train(tiny_run(tmp_path / "off", data_dir, max_iters=32, eval_interval=32))
    assert load_checkpoint(tmp_path / "off" / LAST)["skipped_steps"] == 0
    calls["n"] = 0
    train(tiny_run(tmp_path / "on", data_dir, max_iters=32, eval_interval=32, loss_spike=6.0))
    records = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r.get("skipped_steps") == 1][0] == 30
    assert load_checkpoint(tmp_path / "on" / LAST)["skipped_steps"] == 1


def test_token_ids_beyond_the_vocabulary_are_refused(tmp_path, data_dir):
    meta = read_meta(data_dir)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in data_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    ids = np.fromfile(bad / "train_00000.bin", dtype=np.uint16)
    ids[10] = meta["vocab_size"] + 5
    ids.tofile(bad / "train_00000.bin")
    meta["splits"]["train"]["shards"][0]["sha256"] = __import__("hashlib").sha256(ids.tobytes()).hexdigest()
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UsageError, match=f"token id {meta['vocab_size'] + 5}, beyond"):
        load_split(bad, "train")


def test_second_ctrl_c_quits_at_once():
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def launch(args, out_dir):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "train.py", *args, f"--out_dir={out_dir}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout=60):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def cli_args(data_dir, **overrides):
    cfg = dict(data_dir=data_dir, tokenizer="bytes", n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, max_iters=100000,
               eval_interval=5, eval_tokens=512, log_interval=1, sample_tokens=0, threads=1)
    cfg.update(overrides)
    return [f"--{k}={v}" for k, v in cfg.items()]


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path, data_dir):
    out = tmp_path / "out"
    proc = launch(cli_args(data_dir), out)
    wait_for(lambda: (out / LAST).exists())
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Run the same command again to resume" in stderr and "Traceback" not in stderr
    saved = load_checkpoint(out / LAST)["step"]
    assert saved >= 5
    resumed = launch(cli_args(data_dir, max_iters=saved + 3), out)
    stdout, stderr = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, stderr
    assert f"resuming from {out / LAST} at step {saved}" in stdout
    assert load_checkpoint(out / LAST)["step"] == saved + 3


def test_kill_9_while_saving_leaves_a_loadable_checkpoint(tmp_path, data_dir):
    out = tmp_path / "out"
    # A wider model saved every step: most of the run's time is spent writing checkpoints.
    proc = launch(cli_args(data_dir, n_embd=256, n_head=4, eval_interval=1, keep_last=2), out)
    wait_for(lambda: len(list(out.glob("ckpt_*.pt"))) >= 2)
    time.sleep(0.3)
    proc.kill()
    proc.communicate(timeout=30)
    ckpt = load_checkpoint(out / LAST)  # never half-written: the checksum and torch.load both pass
    assert ckpt["step"] >= 2
    resumed = launch(cli_args(data_dir, n_embd=256, n_head=4, eval_interval=1, keep_last=2, max_iters=ckpt["step"] + 1), out)
    _, stderr = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, stderr


@given(st.lists(st.text(max_size=30), max_size=4))
def test_fuzzed_command_lines_never_raise_anything_but_usage_errors(argv):
    argv = [a for a in argv if a not in ("-h", "--help")]
    try:
        check_config(parse_options(TrainConfig, argv, description=""))
    except UsageError as e:
        assert str(e) and "\n" not in str(e)


@given(st.sampled_from(["n_layer", "lr", "dropout", "resume", "preset", "compile", "pos_encoding", "max_iters", "keep_last"]),
       st.one_of(st.text(max_size=12), st.integers().map(str), st.floats().map(str)))
def test_fuzzed_overrides_are_parsed_or_refused_in_one_line(key, value):
    try:
        check_config(parse_options(TrainConfig, [f"--{key}={value}"], description=""))
    except UsageError as e:
        assert f"--{key}" in str(e) and "\n" not in str(e)
