"""Training end to end on tiny data, learning-rate schedules, evaluation in bits per byte, resume, and safe checkpoints."""
import json
import math
import os
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from gptkit import optim, run_state
from gptkit.checkpoint import BEST, LAST, build_model, load_checkpoint, resolve_checkpoint, save_checkpoint
from gptkit.errors import UsageError
from gptkit.evaluation import evaluate
from gptkit.loader import sequential_windows
from gptkit.model import GPT
from gptkit.optim import lr_multiplier
from gptkit.preparation import PrepareConfig, prepare
from gptkit.tokenizer import byte_tokenizer
from gptkit.train_config import TrainConfig, model_config
from helpers import tiny_model
from train import train


def tiny_run(out_dir, data_dir="", **overrides):
    base = dict(out_dir=str(out_dir), data_dir=str(data_dir), tokenizer="bytes", preset="modern", n_layer=2, n_head=2, n_embd=32,
                block_size=32, batch_size=8, max_iters=40, eval_interval=10, eval_tokens=2048, log_interval=10, warmup_iters=5,
                lr=1e-2, sample_tokens=0, device="cpu", threads=1, seed=7)
    return TrainConfig(**{**base, **overrides})


def metrics(out_dir):
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "val_loss" in r], [r for r in records if "loss" in r]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_tiny_run_learns_and_writes_loadable_checkpoints(tmp_path, corpus_file, optimizer, capsys):
    out = tmp_path / "out"
    cfg = tiny_run(out, tmp_path / "data", data_path=str(corpus_file), optimizer=optimizer, sample_tokens=30, sample_prompt="the ")
    trained = train(cfg)
    assert (tmp_path / "data" / "meta.json").is_file()  # the text file was prepared into data_dir

    evals, steps = metrics(out)
    assert [r["iter"] for r in evals] == [0, 10, 20, 30, 40]
    assert evals[0]["val_loss"] == pytest.approx(math.log(320), rel=0.02)  # untrained: uniform over the padded vocabulary
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 2.0
    assert all(r["val_bpb"] > 0 for r in evals) and evals[-1]["val_bpb"] < evals[0]["val_bpb"]
    assert [r["iter"] for r in steps] == [10, 20, 30, 40]
    assert all(r["tokens"] == r["iter"] * 8 * 32 for r in steps)

    last = load_checkpoint(out / LAST)
    assert last["step"] == 40 and last["train_config"]["optimizer"] == optimizer
    model, tokenizer = build_model(last)
    assert tokenizer.kind == "bytes"
    for name, tensor in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    best = load_checkpoint(out / BEST)
    best_model, _ = build_model(best)
    assert best["val_loss"] == min(r["val_loss"] for r in evals)
    assert best_model.config == model.config
    assert resolve_checkpoint(out) == out / BEST  # sample.py's default choice

    printed = capsys.readouterr().out
    assert "sample" in printed and "\nthe " in printed


def test_shakespeare_bpe_run_lowers_bits_per_byte(tmp_path, shakespeare_text):
    corpus = tmp_path / "shakespeare.txt"
    corpus.write_text(shakespeare_text[:100_000], encoding="utf-8")
    out = tmp_path / "out"
    train(tiny_run(out, tmp_path / "data", data_path=str(corpus), tokenizer="bpe", vocab_size=512, max_iters=60, optimizer="muon"))
    evals, _ = metrics(out)
    assert evals[-1]["val_bpb"] < 0.75 * evals[0]["val_bpb"], evals
    assert load_checkpoint(out)["model_config"]["vocab_size"] == 512


def test_the_end_prints_the_gap_between_training_and_validation_loss(tmp_path, data_dir, capsys):
    out = tmp_path / "out"
    train(tiny_run(out, data_dir, max_iters=6, eval_interval=6, log_interval=1))
    printed = capsys.readouterr().out
    found = re.search(r"^train (\d+\.\d+) \(mean of the last 6 steps\) / val (\d+\.\d+) nats per token: gap ([+-]\d+\.\d+)$", printed, re.M)
    assert found, printed
    train_loss, val_loss, gap = map(float, found.groups())
    evals, steps = metrics(out)
    assert val_loss == pytest.approx(evals[-1]["val_loss"], abs=1e-4)  # the final evaluation
    assert train_loss == pytest.approx(sum(r["loss"] for r in steps) / len(steps), abs=1e-4)  # every step was logged
    assert gap == pytest.approx(val_loss - train_loss, abs=2e-4)


def test_resume_continues_from_the_saved_step(tmp_path, data_dir):
    out = tmp_path / "out"
    train(tiny_run(out, data_dir, max_iters=20))
    assert load_checkpoint(out / LAST)["step"] == 20
    train(tiny_run(out, data_dir, max_iters=30, resume="true"))
    last = load_checkpoint(out / LAST)
    assert last["step"] == 30 and last["tokens_seen"] == 30 * 8 * 32
    evals, steps = metrics(out)
    assert [r["iter"] for r in steps] == [10, 20, 30]  # appended, not restarted
    assert [r["iter"] for r in evals] == [0, 10, 20, 20, 30]
    assert evals[2]["val_loss"] == pytest.approx(evals[3]["val_loss"])  # the same weights, re-evaluated on resume


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, data_dir, monkeypatch):
    cfg = tiny_run(tmp_path / "straight", data_dir, max_iters=20)
    reference = train(cfg)

    real = optim.lr_multiplier

    def interrupt_at_12(step, c):
        if step == 12:
            raise KeyboardInterrupt
        return real(step, c)

    monkeypatch.setattr(optim, "lr_multiplier", interrupt_at_12)
    cfg = replace(cfg, out_dir=str(tmp_path / "interrupted"))
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(optim, "lr_multiplier", real)
    assert load_checkpoint(tmp_path / "interrupted" / LAST)["step"] == 10
    resumed = train(replace(cfg, resume="true"))

    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert metrics(tmp_path / "interrupted")[0][-1]["val_loss"] == pytest.approx(metrics(tmp_path / "straight")[0][-1]["val_loss"], abs=1e-6)


def test_resume_with_a_different_model_is_a_usage_error(tmp_path, data_dir):
    out = tmp_path / "out"
    train(tiny_run(out, data_dir, max_iters=10))
    with pytest.raises(UsageError, match="n_embd") as info:
        train(tiny_run(out, data_dir, max_iters=20, n_embd=16, resume="true"))
    assert "--out_dir" in str(info.value)


def test_resume_with_a_different_tokenizer_is_a_usage_error(tmp_path, data_dir, corpus_file):
    out = tmp_path / "out"
    train(tiny_run(out, data_dir, max_iters=10))
    bpe_dir = tmp_path / "bpe"
    prepare(PrepareConfig(inputs=[str(corpus_file)], tokenizer="bpe", vocab_size=300, val_fraction=0.1, out_dir=str(bpe_dir)))
    with pytest.raises(UsageError, match="different tokenizer"):
        train(tiny_run(out, bpe_dir, max_iters=20, resume="true"))  # 300 ids pad to the same 320 as bytes


def test_resume_without_a_checkpoint_is_a_usage_error(tmp_path, data_dir):
    with pytest.raises(UsageError, match="does not exist"):
        train(tiny_run(tmp_path / "empty", data_dir, resume="true"))


@pytest.mark.parametrize("bad, fragment", [
    (dict(n_layer=0), "--n_layer"), (dict(batch_size=-1), "--batch_size"), (dict(max_iters=-5), "--max_iters"),
    (dict(dropout=1.0), "--dropout"), (dict(n_embd=30, n_head=4), "divisible"), (dict(block_size=20000), "too few"),
])
def test_bad_settings_are_usage_errors(tmp_path, data_dir, bad, fragment):
    with pytest.raises(UsageError, match=fragment):
        train(tiny_run(tmp_path / "out", data_dir, **{"max_iters": 1, **bad}))


def test_pos_encoding_overrides_the_preset():
    config = model_config(tiny_run("x", pos_encoding="learned"), 264)
    assert config.pos_encoding == "learned" and config.norm == "rmsnorm"
    assert config.vocab_size == 320  # padded to a multiple of 64


def schedule(**kw):
    cfg = TrainConfig(**{**dict(max_iters=1000, warmup_iters=100, min_lr_frac=0.1), **kw})
    return [lr_multiplier(step, cfg) for step in range(cfg.max_iters + 1)]


def test_warmup_is_linear_to_the_peak():
    lr = schedule()
    assert lr[0] == pytest.approx(0.01)
    assert lr[49] == pytest.approx(0.5)
    assert lr[99] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(lr[:99], lr[1:100]))


def test_cosine_decays_smoothly_to_the_floor():
    lr = schedule(lr_schedule="cosine")
    assert lr[100] == pytest.approx(1.0)
    assert lr[550] == pytest.approx(0.55)  # halfway: midway between peak and floor
    assert lr[1000] == pytest.approx(0.1)
    assert all(b <= a for a, b in zip(lr[100:], lr[101:]))


def test_wsd_is_flat_then_decays_linearly():
    lr = schedule(lr_schedule="wsd", decay_frac=0.2)
    assert all(m == 1.0 for m in lr[100:800])
    assert lr[900] == pytest.approx(0.55)
    assert lr[1000] == pytest.approx(0.1)
    assert all(b <= a for a, b in zip(lr[800:], lr[801:]))


def test_no_warmup_starts_at_the_peak():
    assert schedule(warmup_iters=0)[0] == pytest.approx(1.0)


def test_bits_per_byte_of_a_uniform_model(bpe_tok, corpus_text):
    """A model that predicts uniformly scores ln(V) nats per token; bpb divides the text tokens' bits by their bytes."""
    torch.manual_seed(0)
    model = GPT(model_config(tiny_run("x", block_size=16), bpe_tok.n_vocab))
    torch.nn.init.zeros_(model.lm_head.weight)  # untied in the modern preset: all logits 0
    text = corpus_text[:2000]
    ids = np.array(bpe_tok.encode(text) + [bpe_tok.eot_id], dtype=np.uint16)
    byte_lengths = torch.tensor(bpe_tok.token_byte_lengths() + [0] * 64)
    result = evaluate(model, sequential_windows([ids], 4, 16), byte_lengths, "cpu", torch.autocast("cpu", enabled=False))
    vocab = model.config.vocab_size
    scored = ids[1:1 + (len(ids) - 1) // 16 * 16]  # the targets of whole windows
    n_text = int((scored != bpe_tok.eot_id).sum())
    n_bytes = sum(bpe_tok.token_byte_lengths()[i] for i in scored)
    assert result["val_loss"] == pytest.approx(math.log(vocab), rel=1e-5)
    assert result["val_bpb"] == pytest.approx(n_text * math.log2(vocab) / n_bytes, rel=1e-5)
    assert model.training  # evaluate puts the model back in training mode


# ----- checkpoints -----

@pytest.fixture
def saved(tmp_path):
    model = tiny_model("modern", vocab_size=320, block_size=16)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, byte_tokenizer(), step=3)
    return path, model


def test_checkpoint_round_trip(saved):
    path, model = saved
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 3
    loaded, tokenizer = build_model(ckpt)
    assert loaded.config == model.config and not loaded.training
    idx = torch.randint(0, 264, (1, 8))
    torch.testing.assert_close(loaded(idx), model(idx), rtol=0, atol=0)
    assert tokenizer.encode("héllo") == byte_tokenizer().encode("héllo")


def test_truncated_checkpoint_is_refused(saved):
    path, _ = saved
    for size in (100, len(path.read_bytes()) // 2):
        path.write_bytes(path.read_bytes()[:size])
        with pytest.raises(UsageError, match="truncated or corrupted"):
            load_checkpoint(path)


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(UsageError):
        load_checkpoint(path)


def test_empty_checkpoint_file_is_refused(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(UsageError):
        load_checkpoint(path)


def test_text_file_is_refused(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello world, not a checkpoint")
    with pytest.raises(UsageError):
        load_checkpoint(path)


def test_flipped_byte_in_the_weights_is_detected(saved):
    path, model = saved
    data = bytearray(path.read_bytes())
    weights = model.state_dict()["lm_head.weight"]
    at = bytes(data).find(weights.numpy().tobytes()[:64])
    assert at > 0
    data[at + 10] ^= 0x40
    path.write_bytes(bytes(data))
    try:
        loaded, _ = build_model(load_checkpoint(path))
    except UsageError:
        return
    assert torch.equal(loaded.state_dict()["lm_head.weight"], weights), "corrupted weights were loaded without an error"


class Payload:
    marker = None

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    payload = Payload()
    payload.marker = marker
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": payload, "model_config": {}, "tokenizer": ""}, path)
    assert not marker.exists()
    with pytest.raises(UsageError, match="refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(UsageError, match="not a checkpoint written by this toolkit"):
        load_checkpoint(path)


def test_newer_format_is_refused(tmp_path):
    model = tiny_model("gpt2")
    path = tmp_path / "new.pt"
    save_checkpoint(path, model, byte_tokenizer(), format_version=99)
    with pytest.raises(UsageError, match="newer version"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_config_are_refused(saved):
    path, _ = saved
    ckpt = load_checkpoint(path)
    ckpt["model_config"]["n_embd"] = 64
    with pytest.raises(UsageError, match="do not fit"):
        build_model(ckpt)


def test_tokenizer_larger_than_the_model_is_refused(tmp_path):
    path = tmp_path / "small.pt"
    save_checkpoint(path, tiny_model("gpt2", vocab_size=64), byte_tokenizer())
    with pytest.raises(UsageError, match="264 ids but the model only 64"):
        build_model(load_checkpoint(path))


def test_resolve_checkpoint_in_a_folder(tmp_path, saved):
    path, model = saved
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(UsageError, match="no checkpoint in"):
        resolve_checkpoint(folder)
    save_checkpoint(folder / LAST, model, byte_tokenizer())
    assert resolve_checkpoint(folder) == folder / LAST
    save_checkpoint(folder / BEST, model, byte_tokenizer())
    assert resolve_checkpoint(folder) == folder / BEST
    with pytest.raises(UsageError, match="does not exist"):
        resolve_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip():
    run_state.seed_everything(3)
    state = run_state.rng_state()
    expected = (np.random.random(), torch.rand(1).item())
    run_state.restore_rng_state(state)
    assert (np.random.random(), torch.rand(1).item()) == expected


def test_wandb_logging_works_offline(tmp_path, data_dir, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(tiny_run(tmp_path / "out", data_dir, max_iters=10, wandb=True, wandb_run_name="tiny"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "the offline run holds no logged data"
