"""Bad input, class by class: one clear line (exit 2) or a safe, documented behaviour; never a traceback, a hang or lost work."""
import contextlib
import json
import math

import pytest
import torch

from gptkit import files
from gptkit.checkpoint import BEST, load_checkpoint, save_checkpoint
from gptkit.devices import pick_device
from gptkit.errors import UsageError
from gptkit.metrics import MetricsLog
from gptkit.options import parse_options, set_option
from gptkit.shards import META_FILE, load_split, read_meta
from gptkit.sources import decode_text
from gptkit.tokenizer import byte_tokenizer
from gptkit.train_config import TrainConfig
from helpers import REPO, run_script, tiny_model
from test_chat import chat
from test_cli import assert_one_line_error
from test_resilience import tiny_run
from train import train

# -- numbers: every option's bounds, declared beside it and checked by the parser ---------------------------------------


@pytest.mark.parametrize("argv, fragment", [
    (["--lr=inf"], "--lr=inf must be a finite number"),
    (["--min_lr_frac=nan"], "--min_lr_frac=nan must be a finite number"),
    (["--lr=-1"], "--lr=-1.0 must be in [0, 1e6]"),
    (["--beta2=1"], "--beta2=1.0 must be in [0, 1)"),
    (["--weight_decay=-0.1"], "must not be negative"),
    (["--seed=-1"], "--seed=-1 must be in [0, 4294967295]"),
    (["--threads=100000"], "--threads=100000 must be in [0, 4096]"),
    (["--max_iters=2e9"], "--max_iters=2000000000 must be in [0, 1000000000]"),
    (["--n_embd=0"], "--n_embd=0 must be in [1, 65536]"),
    (["--batch_size=99999999999999999999999"], "is too large"),
])
def test_out_of_bounds_numbers_are_one_line_naming_the_option(argv, fragment):
    with pytest.raises(UsageError) as error:
        parse_options(TrainConfig, argv, description="", default_config="default")
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_a_config_file_gets_the_same_bounds(tmp_path):
    (tmp_path / "bad.py").write_text("lr = 1e999\n")
    with pytest.raises(UsageError, match=r"bad.py:1: --lr=inf must be a finite number"):
        parse_options(TrainConfig, [str(tmp_path / "bad.py")], description="")


def test_help_shows_the_bounds():
    from gptkit.options import usage
    text = usage(TrainConfig, "", "config")
    assert "--beta1=0.9  [float]  AdamW beta1 (must be in [0, 1))" in text and "(must not be negative)" in text


def test_chat_set_refuses_a_non_finite_temperature():
    from chat import ChatConfig
    with pytest.raises(UsageError, match="--temperature=nan must be a finite number"):
        set_option(ChatConfig(), "temperature", "nan")


@pytest.mark.parametrize("name, fragment", [("tpu", "expected auto, cpu, cuda, cuda:N or mps"), ("cuda:x", "expected auto"),
                                            ("cuda", "no CUDA GPU"), ("mps", "MPS is not available")])
def test_devices_are_checked_against_what_is_here(name, fragment):
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UsageError, match=fragment):
        pick_device(name)


# -- no lost work ---------------------------------------------------------------------------------------------------------

def test_a_folder_with_best_but_no_last_is_not_overwritten(tmp_path, data_dir):
    out = tmp_path / "out"
    out.mkdir()
    save_checkpoint(out / BEST, tiny_model(), byte_tokenizer(), step=100, val_loss=1.0)
    (out / "metrics.jsonl").write_text('{"iter": 100, "tokens": 5, "val_loss": 1.0}\n')
    before = (out / BEST).read_bytes()
    with pytest.raises(UsageError, match=r"holds best.pt but no last.pt.*--resume=false"):
        train(tiny_run(out, data_dir))
    assert (out / BEST).read_bytes() == before and (out / "metrics.jsonl").read_text().startswith('{"iter": 100')


def test_temporary_files_of_an_interrupted_save_are_cleaned_at_start(tmp_path, data_dir):
    out = tmp_path / "out"
    out.mkdir()
    gone_pid = 4_000_000  # above Linux's pid_max: no such process
    for name in (f".best.pt.tmp{gone_pid}", f".last.pt.link{gone_pid}"):
        (out / name).write_bytes(b"half a checkpoint")
    train(tiny_run(out, data_dir, max_iters=2, eval_interval=2))
    assert not (out / f".best.pt.tmp{gone_pid}").exists() and not (out / f".last.pt.link{gone_pid}").exists()


@pytest.mark.parametrize("out_dir, fragment", [("", "--out_dir is empty"), ("   ", "--out_dir is empty"),
                                               (str(REPO / "gptkit"), "is in the source tree"), (str(REPO), "is in the source tree")])
def test_an_empty_or_source_tree_out_dir_is_refused(out_dir, fragment, data_dir):
    with pytest.raises(UsageError, match=fragment):
        train(tiny_run(out_dir, data_dir))


def test_output_paths_are_checked_before_any_work(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(UsageError, match="is a file; name a folder"):
        files.check_output(a_file, "out_dir", folder=True)
    with pytest.raises(UsageError, match="is a folder; name a file"):
        files.check_output(tmp_path, "out")
    with pytest.raises(UsageError, match="is a file, so nothing can be created under it"):
        files.check_output(a_file / "sub" / "x.png", "out")
    assert files.check_output(tmp_path / "new" / "deeper", "out_dir", folder=True) == tmp_path / "new" / "deeper"


def test_resuming_past_max_iters_stops_at_once(tmp_path, data_dir):
    out = tmp_path / "out"
    train(tiny_run(out, data_dir, max_iters=4, eval_interval=4))
    with pytest.raises(UsageError, match=r"is at step 4, past --max_iters=2: nothing to train"):
        train(tiny_run(out, data_dir, max_iters=2, eval_interval=4))


def test_changing_the_optimizer_on_resume_says_what_differs_and_the_ways_out(tmp_path, data_dir):
    out = tmp_path / "out"
    train(tiny_run(out, data_dir, max_iters=2, eval_interval=2, optimizer="adamw"))
    with pytest.raises(UsageError, match=r"--optimizer=adamw, this run asks for --optimizer=muon.*--resume=false.*another --out_dir"):
        train(tiny_run(out, data_dir, max_iters=4, eval_interval=2, optimizer="muon"))


def test_an_update_that_makes_weights_non_finite_is_undone_and_skipped(data_dir):
    from gptkit.loader import RandomWindows
    from gptkit.objectives import NextToken
    from gptkit.optim import train_step
    from gptkit.shards import load_split
    from gptkit.spike_guard import SpikeGuard

    class Overflowing(torch.optim.SGD):  # an update that overflows, as a learning rate far too high would make one
        def step(self):
            super().step()
            with torch.no_grad():
                self.param_groups[0]["params"][0][0, 0] = math.inf

    model = tiny_model("gpt2", vocab_size=320, block_size=32, n_embd=32).train()
    optimizer = Overflowing(model.parameters(), lr=0.1, momentum=0.9)
    optimizer.param_groups[0]["peak_lr"] = 0.1
    batches = RandomWindows(load_split(data_dir, "train"), 4, 32, 0)
    cfg = TrainConfig(batch_size=4, block_size=32, warmup_iters=0, max_iters=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, _, _, skipped = train_step(model, model, [optimizer], NextToken(None, batches, None, ""), batches, cfg, 0, "cpu",
                                     contextlib.nullcontext(), SpikeGuard(0.0))
    assert math.isfinite(loss) and skipped == "an update that made weights non-finite"
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    assert not optimizer.state  # no momentum from an update that was undone


def test_a_learning_rate_past_float32_is_refused_before_training():
    with pytest.raises(UsageError, match=r"--lr=1e\+300 must be in \[0, 1e6\]"):
        parse_options(TrainConfig, ["--lr=1e300"], description="")


def test_metrics_stay_valid_json(tmp_path):
    log = MetricsLog(TrainConfig(out_dir=str(tmp_path)), fresh=True)
    log.write({"iter": 1, "tokens": 8, "loss": math.nan, "tokens_per_s": math.inf})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(c)) == {"iter": 1, "tokens": 8, "loss": None, "tokens_per_s": None}


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_model(), byte_tokenizer())
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/3: file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UsageError, match="is the disk full"):
        save_checkpoint(path, tiny_model(), byte_tokenizer())
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


# -- files that lie -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("meta, fragment", [
    ([], "the file should be a JSON object"),
    ({"tokenizer": 3}, "tokenizer should be a string"),
    ({"tokenizer": "bytes", "vocab_size": "264", "dtype": "uint16", "splits": {}}, "vocab_size should be a positive integer"),
    ({"tokenizer": "bytes", "vocab_size": 264, "dtype": "float64", "splits": {}}, "dtype should be uint16 or uint32"),
    ({"tokenizer": "bytes", "vocab_size": 264, "dtype": "uint16", "splits": {"train": {"tokens": 5, "shards": [{"file": "../x"}]}}},
     "splits.train.shards[0] should be"),
])
def test_a_prepared_folder_whose_meta_has_the_wrong_shape_is_one_line(tmp_path, meta, fragment):
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(UsageError, match=fragment.replace("[", r"\[").replace("]", r"\]")) as error:
        load_split(tmp_path, "train")
    assert str(tmp_path / META_FILE) in str(error.value)


def test_a_file_given_for_a_prepared_folder_says_so(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(UsageError, match="is a file; give the folder data/prepare.py wrote"):
        read_meta(tmp_path / "x.txt")


def test_a_checkpoint_whose_model_settings_have_the_wrong_types_is_one_line(tmp_path):
    model = tiny_model()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, byte_tokenizer())
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_config"]["n_layer"] = "2"
    torch.save(ckpt, path)
    with pytest.raises(UsageError, match=r"model.pt: model setting 'n_layer' is '2', expected a positive int"):
        load_checkpoint(path)


def test_an_exported_config_with_the_wrong_types_is_one_line(tmp_path):
    from export import export
    from gptkit.hf import from_pretrained
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_model("modern", vocab_size=byte_tokenizer().n_vocab), byte_tokenizer())
    export(path, tmp_path / "exported")
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    config["n_head"] = 0
    (tmp_path / "exported" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match=r"config.json: model setting 'n_head' is 0, expected a positive int"):
        from_pretrained(tmp_path / "exported")


def test_a_folder_given_for_a_file_is_not_reported_missing(tmp_path):
    assert_one_line_error(run_script("sample.py", "--ckpt=gpt2", f"--prompt_file={tmp_path}"), "is a folder; give a file")


def test_invalid_utf8_is_counted_and_binary_files_are_refused(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_bytes(b"hello \xff world \xe2\x82 ok")
    assert decode_text(text) == "hello \ufffd world \ufffd ok"
    assert "2 invalid UTF-8 sequence(s) replaced" in capsys.readouterr().out
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 16)
    with pytest.raises(UsageError, match="looks binary"):
        decode_text(binary)


def test_a_piped_assistant_message_is_skipped_with_a_note(tmp_path):
    path = tmp_path / "chat.pt"
    save_checkpoint(path, tiny_model("gpt2", vocab_size=byte_tokenizer().n_vocab, block_size=64, n_embd=32), byte_tokenizer(), chat_tuned=True)
    result = chat(path, '{"role": "assistant", "content": "I am the model"}\nhello\n')
    assert result.rc == 0 and len(result.replies) == 1
    assert 'a piped message with role "assistant" was skipped' in result.stderr and "Traceback" not in result.stderr
