"""The checkpoint schema: one builder, type checks on load, and explicit upgrades of older formats.

tests/fixtures/v1/last.pt was written by the code before the package layout (format 1): a 1-layer model trained
4 steps on tests/fixtures/v1/corpus.txt. resumed_losses.json holds the losses that code logged when resuming it to
step 8; a resume today must reproduce them (to float32 rounding, which other CPUs' kernels may change).
"""
import json
import shutil
from pathlib import Path

import pytest
import torch

from gptkit.checkpoint import FORMAT_VERSION, LAST, load_checkpoint, make_checkpoint, save_checkpoint
from gptkit.errors import UsageError
from gptkit.preparation import PrepareConfig, prepare
from gptkit.tokenizer import byte_tokenizer
from gptkit.train_config import TrainConfig
from helpers import tiny_model
from test_resilience import step_losses
from train import train

FIXTURE = Path(__file__).parent / "fixtures" / "v1"


def fixture_run(tmp_path, **overrides):
    """The fixture's training options, with its checkpoint copied into a fresh out_dir and its corpus prepared."""
    prepare(PrepareConfig(inputs=[str(FIXTURE / "corpus.txt")], tokenizer="bytes", val_fraction=0.1, out_dir=str(tmp_path / "data")))
    (tmp_path / "out").mkdir()
    shutil.copy(FIXTURE / LAST, tmp_path / "out" / LAST)
    options = dict(out_dir=str(tmp_path / "out"), data_dir=str(tmp_path / "data"), tokenizer="bytes", n_layer=1, n_head=2, n_embd=16,
                   block_size=16, batch_size=4, max_iters=8, eval_interval=4, eval_tokens=256, log_interval=1, warmup_iters=2, lr=1e-2,
                   sample_tokens=0, device="cpu", threads=1, seed=5, optimizer="adamw", loss_spike=3.0, resume="true")
    return TrainConfig(**{**options, **overrides})


def test_a_format_1_checkpoint_loads_upgraded():
    ckpt = load_checkpoint(FIXTURE / LAST)
    assert ckpt["format_version"] == FORMAT_VERSION == 4
    assert ckpt["model_config"]["score_head"] is False  # 3 -> 4: not a reward model
    assert ckpt["objective"] == {"name": "next_token"} and ckpt["chat_tuned"] is False
    assert ckpt["step"] == 4 and ckpt["skipped_steps"] == 0 and ckpt["spikes"]["count"] == 4


def test_a_format_1_checkpoint_resumes_with_the_losses_the_old_code_logged(tmp_path):
    expected = json.loads((FIXTURE / "resumed_losses.json").read_text())
    train(fixture_run(tmp_path))
    got = step_losses(tmp_path / "out")
    # the same run, to float32 rounding: another CPU's kernels may round a sum differently (5.075994 vs ...4491 at step 6)
    assert got == pytest.approx({int(k): v for k, v in expected["loss"].items()}, abs=1e-6, rel=0)
    saved = load_checkpoint(tmp_path / "out" / LAST)
    assert saved["format_version"] == 4 and saved["step"] == 8 and saved["objective"] == {"name": "next_token"}


def test_resuming_a_pretraining_run_as_fine_tuning_says_what_differs(tmp_path):
    cfg = fixture_run(tmp_path)
    ckpt = torch.load(FIXTURE / LAST, weights_only=True)
    ckpt["train_config"]["chat_data"] = "chat.jsonl"  # as if a fine-tuning run had written it
    del ckpt["weights_sha256"]
    from gptkit.checkpoint import write_checkpoint
    write_checkpoint(tmp_path / "out" / LAST, ckpt)
    with pytest.raises(UsageError, match="saved by a chat_sft run and this one trains next_token.*--resume=false"):
        train(cfg)


def test_make_checkpoint_refuses_a_field_outside_the_schema():
    with pytest.raises(ValueError, match="not checkpoint fields: stepp"):
        make_checkpoint(tiny_model().config, {}, byte_tokenizer(), stepp=3)


@pytest.mark.parametrize("field, value, expected", [("step", "3", "expected int"), ("chat_tuned", 1, "expected bool"),
                                                    ("train_config", [], "expected dict or none"), ("step", True, "expected int")])
def test_a_field_of_the_wrong_type_is_one_line_naming_the_file_and_field(tmp_path, field, value, expected):
    path = tmp_path / "bad.pt"
    save_checkpoint(path, tiny_model(), byte_tokenizer(), **{field: value})
    with pytest.raises(UsageError, match=f"bad.pt: field '{field}' is a .*, {expected}; the file is damaged"):
        load_checkpoint(path)
