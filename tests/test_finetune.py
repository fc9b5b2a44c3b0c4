"""Fine-tuning on conversations: from a checkpoint, loss only on replies, long conversations, exact resume, chat accuracy."""
import json
import math

import pytest
import torch

from gptkit import loader, optim
from gptkit.checkpoint import LAST, load_checkpoint
from gptkit.demo_chat import make_conversations
from gptkit.errors import UsageError
from gptkit.signals import TrainingStopped
from test_resilience import step_losses, stop_at, tiny_run
from train import train


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir):
    """A tiny modern model pretrained a few steps on the bytes corpus: the checkpoint fine-tuning starts from."""
    out = tmp_path_factory.mktemp("pretrained")
    train(tiny_run(out, data_dir, preset="modern", max_iters=8, eval_interval=8, block_size=32))
    return out


@pytest.fixture
def chat_file(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in make_conversations(120, seed=0)), encoding="utf-8")
    return path


def sft_run(out_dir, pretrained, chat_file, **overrides):
    return tiny_run(out_dir, "", **{**dict(init_from=str(pretrained), chat_data=str(chat_file), block_size=160, batch_size=4,
                                           max_iters=12, eval_interval=6, val_fraction=0.1), **overrides})


def val_losses(out_dir):
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in records if "val_loss" in r]


def test_fine_tuning_lowers_the_reply_loss_and_marks_the_checkpoint(tmp_path, pretrained, chat_file, capsys):
    out = tmp_path / "sft"
    model = train(sft_run(out, pretrained, chat_file, max_iters=30, eval_interval=15))
    losses = val_losses(out)
    assert losses[-1] < 0.7 * losses[0]
    ckpt = load_checkpoint(out / LAST)
    assert ckpt["chat_tuned"] is True
    assert ckpt["model_config"]["block_size"] == 160  # RoPE: the context grew past the pretrained 32
    start = load_checkpoint(pretrained / LAST)
    assert ckpt["tokenizer"] == start["tokenizer"]
    assert model.config.n_embd == start["model_config"]["n_embd"]
    printed = capsys.readouterr().out
    assert "held out" in printed and "from" in printed


def test_the_loss_is_taken_only_on_the_assistant_replies(tmp_path, pretrained, chat_file, monkeypatch):
    seen = []
    real = loader.ConversationBatches.next_batch

    def spy(self):
        x, y = real(self)
        seen.append((x, y))
        return x, y

    monkeypatch.setattr(loader.ConversationBatches, "next_batch", spy)
    train(sft_run(tmp_path / "sft", pretrained, chat_file, max_iters=2))
    from gptkit.tokenizer import Tokenizer
    tokenizer = Tokenizer.from_json(load_checkpoint(pretrained / LAST)["tokenizer"])
    user_end, assistant_end = tokenizer.special_id("<|user_end|>"), tokenizer.special_id("<|assistant_end|>")
    for _, y in seen:
        targets = y[y >= 0]
        assert len(targets) > 0
        assert user_end not in targets and assistant_end in targets


def test_fine_tuning_needs_a_checkpoint_to_start_from(tmp_path, chat_file):
    with pytest.raises(UsageError, match="needs --init_from"):
        train(tiny_run(tmp_path / "sft", "", chat_data=str(chat_file)))


def test_conversations_longer_than_the_context_are_cut_or_dropped_and_counted(tmp_path, pretrained, capsys):
    path = tmp_path / "long.jsonl"
    conversations = []
    for i in range(4):
        short = [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"}]
        long = short + [{"role": "user", "content": "more"}, {"role": "assistant", "content": "x" * 300}]
        hopeless = [{"role": "user", "content": "y" * 300}, {"role": "assistant", "content": f"ok {i}"}]
        conversations += [{"messages": m} for m in (short, long, hopeless)]
    path.write_text("".join(json.dumps(c) + "\n" for c in conversations), encoding="utf-8")
    train(tiny_run(tmp_path / "sft", "", init_from=str(pretrained), chat_data=str(path), block_size=64, max_iters=4,
                   eval_interval=4, val_fraction=0.25, batch_size=2))
    out = capsys.readouterr().out
    assert "cut to --block_size=64" in out and "dropped" in out
    assert all(math.isfinite(v) for v in val_losses(tmp_path / "sft"))  # no NaN from an empty batch
    assert all(math.isfinite(v) for v in step_losses(tmp_path / "sft").values())


def test_a_learned_position_table_cannot_grow(tmp_path, data_dir, chat_file):
    gpt2 = tmp_path / "gpt2"
    train(tiny_run(gpt2, data_dir, preset="gpt2", max_iters=2, eval_interval=2, block_size=32))
    with pytest.raises(UsageError, match="longer than the 32 positions"):  # half held out: some fit 64 byte tokens
        train(tiny_run(tmp_path / "sft", "", init_from=str(gpt2), chat_data=str(chat_file), block_size=64, val_fraction=0.5))


def test_stopped_and_resumed_fine_tuning_has_bit_identical_losses(tmp_path, pretrained, chat_file, monkeypatch):
    straight = tmp_path / "straight"
    reference = train(sft_run(straight, pretrained, chat_file))
    stopped = tmp_path / "stopped"
    real = stop_at(monkeypatch, 6)
    with pytest.raises(TrainingStopped):
        train(sft_run(stopped, pretrained, chat_file))
    assert load_checkpoint(stopped / LAST)["step"] == 7
    monkeypatch.setattr(optim, "lr_multiplier", real)
    resumed = train(sft_run(stopped, pretrained, chat_file))
    expected, got = step_losses(straight), step_losses(stopped)
    assert sorted(got) == sorted(expected) == list(range(1, 13))
    assert [got[i] for i in range(1, 13)] == [expected[i] for i in range(1, 13)]
    for name, tensor in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


def test_eval_chat_prints_the_accuracy_per_kind(tmp_path, pretrained, capsys):
    train(tiny_run(tmp_path / "sft", "", init_from=str(pretrained), chat_data="demo", demo_conversations=200, block_size=160,
                   batch_size=4, max_iters=2, eval_interval=2, val_fraction=0.1, eval_chat=8))
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("chat accuracy on"))
    assert "held-out conversations" in line and "%" in line


def test_fine_tuning_on_a_local_hugging_face_dataset_with_a_messages_column(tmp_path, pretrained, chat_file):
    pytest.importorskip("datasets")
    folder = tmp_path / "hf_chat"
    folder.mkdir()
    (folder / "train.jsonl").write_text(chat_file.read_text(encoding="utf-8"), encoding="utf-8")
    train(tiny_run(tmp_path / "sft", "", init_from=str(pretrained), chat_dataset=str(folder), block_size=160, batch_size=4,
                   max_iters=2, eval_interval=2, val_fraction=0.1))
    assert load_checkpoint(tmp_path / "sft" / LAST)["chat_tuned"] is True
    (folder / "train.jsonl").write_text('{"text": "no messages here"}\n', encoding="utf-8")
    with pytest.raises(UsageError, match="no column 'messages'"):
        train(tiny_run(tmp_path / "sft2", "", init_from=str(pretrained), chat_dataset=str(folder)))
