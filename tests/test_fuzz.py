"""Fuzzing every command as a user with bad luck would: bad option values and crafted bad files.

Each case runs the command as a user does (a subprocess from the repo root) and fails on a Python traceback, on a hang
(a timeout), on an exit other than 0 or 2, on an exit 2 whose last line is not the one-line `error: ...`, and on an
exit 0 of train.py that wrote a checkpoint with a non-finite weight. The default run tries a quick sample of option
values and every crafted file; `--runslow` tries many more values (FUZZ_EXAMPLES).
"""
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import typing
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chat import ChatConfig
from data.synthetic_chat import SyntheticChatConfig
from export import ExportConfig
from gptkit.checkpoint import save_checkpoint
from gptkit.evaluation import EvalConfig
from gptkit.preparation import PrepareConfig
from gptkit.tokenizer import byte_tokenizer
from gptkit.train_config import TrainConfig
from helpers import REPO, make_corpus, tiny_model
from plot import PlotConfig
from sample import SampleConfig

FUZZ_EXAMPLES = int(os.environ.get("GPTKIT_FUZZ_EXAMPLES", "300"))
TIMEOUT_S = 120
NOT_FUZZED = {"compile", "wandb", "parallel", "device"}  # valid values start slow work (a compile, an account); bad ones are tested elsewhere


class Context:
    """The files every case starts from: a prepared folder, a chat-tuned checkpoint, a text file, a run with metrics."""

    def __init__(self, root, data_dir):
        self.root, self.data = root, data_dir
        self.text = root / "text.txt"
        self.text.write_text(make_corpus(80), encoding="utf-8")
        self.ckpt = root / "model.pt"
        save_checkpoint(self.ckpt, tiny_model("gpt2", vocab_size=byte_tokenizer().n_vocab, block_size=32, n_embd=16), byte_tokenizer(),
                        chat_tuned=True)
        self.run = root / "run"
        self.run.mkdir()
        (self.run / "metrics.jsonl").write_text('{"iter": 1, "tokens": 32, "loss": 5.0, "lr": 0.001}\n'
                                                '{"iter": 1, "tokens": 32, "val_loss": 5.1, "val_bpb": 7.0}\n')
        self.folder = root / "a_folder"
        self.folder.mkdir()
        (self.folder / "notes.bin").write_bytes(b"\x00\x01")


COMMANDS = {  # script: (its options, the arguments of a tiny valid run, with OUT a fresh folder)
    "train.py": (TrainConfig, lambda c, out: [f"--data_dir={c.data}", f"--out_dir={out}/run", "--tokenizer=bytes", "--n_layer=1", "--n_head=2",
                                              "--n_embd=16", "--block_size=16", "--batch_size=2", "--max_iters=2", "--eval_interval=1",
                                              "--eval_tokens=64", "--sample_tokens=4", "--device=cpu", "--threads=1", "--log_interval=1"]),
    "sample.py": (SampleConfig, lambda c, out: [f"--ckpt={c.ckpt}", "--max_new_tokens=4", "--device=cpu"]),
    "chat.py": (ChatConfig, lambda c, out: [f"--ckpt={c.ckpt}", "--max_new_tokens=4", "--device=cpu"]),
    "evaluate.py": (EvalConfig, lambda c, out: [f"--ckpt={c.ckpt}", f"--data={c.text}", "--device=cpu"]),
    "export.py": (ExportConfig, lambda c, out: [f"--ckpt={c.ckpt}", f"--out_dir={out}/exported"]),
    "data/prepare.py": (PrepareConfig, lambda c, out: [str(c.text), "--tokenizer=bytes", f"--out_dir={out}/prepared", "--val_fraction=0.1"]),
    "data/synthetic_chat.py": (SyntheticChatConfig, lambda c, out: [f"--out={out}/chat.jsonl", "--n=3"]),
    "plot.py": (PlotConfig, lambda c, out: [str(c.run), f"--out={out}/curves.png"]),
}
FLOATS = ["nan", "inf", "-inf", "1e999", "-1", "0", "1e300", "-1e-300", "abc", "", "1,5", "0x10"]
INTS = ["-1", "0", "1e30", "99999999999999999999999", "1.5", "nan", "abc", "", "-99999", "4294967296"]
BOOLS = ["maybe", "", "2", "none"]


def strings(c):
    return ["", " ", str(c.root / "missing" / "x"), str(c.text), str(c.folder), f"{c.text}/sub", "-", "none", "\u00e9\u4e2d", "out.txt"]


def bad_values(c, tp):
    base = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Union else tp
    if base is bool:
        return BOOLS
    if base is float:
        return FLOATS
    if base is int:
        return INTS
    return strings(c)


def fuzzable(config_class):
    hints = typing.get_type_hints(config_class)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(config_class) if f.name not in NOT_FUZZED]


def run_command(script, args, cwd, stdin="hello\n/set temperature 2\nhi\n"):
    """`python REPO/SCRIPT ARGS` from `cwd`, a fresh folder: relative paths a bad value names land there."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                              encoding="utf-8", errors="replace", timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hang: {script} {' '.join(args)} ran past {TIMEOUT_S} s")


def check_outcome(result, script, args, out):
    what = f"{script} {' '.join(args)}"
    assert "Traceback" not in result.stderr, f"traceback from {what}:\n{result.stderr[-3000:]}"
    assert result.returncode in (0, 2), f"exit {result.returncode} from {what}:\n{result.stderr[-3000:]}"
    if result.returncode == 2:
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: "), f"{what} ended with {last!r}"
    if result.returncode == 0 and script == "train.py":
        for path in Path(out).rglob("*.pt"):
            weights = torch.load(path, weights_only=True)["model"]
            assert all(torch.isfinite(t).all() for t in weights.values()), f"{what} wrote non-finite weights to {path}"


@pytest.fixture(scope="module")
def context(tmp_path_factory, data_dir):
    return Context(tmp_path_factory.mktemp("fuzz"), data_dir)


TRIED = []  # (script, option, value) of every case run, for the count the closing note gives


def fuzz_case(context, data):
    script = data.draw(st.sampled_from(sorted(COMMANDS)), label="command")
    config_class, base = COMMANDS[script]
    name, tp = data.draw(st.sampled_from(fuzzable(config_class)), label="option")
    value = data.draw(st.sampled_from(bad_values(context, tp)), label="value")
    out = tempfile.mkdtemp(dir=context.root)
    args = [*base(context, out), f"--{name}={value}"]
    TRIED.append((script, name, value))
    check_outcome(run_command(script, args, out), script, args, out)


@settings(max_examples=3)  # each example starts a script; the slow test tries hundreds
@given(data=st.data())
def test_bad_option_values_quick_sample(context, data):
    fuzz_case(context, data)


@pytest.mark.slow
@settings(max_examples=FUZZ_EXAMPLES)
@given(data=st.data())
def test_bad_option_values(context, data):
    fuzz_case(context, data)
    if len(TRIED) % 50 == 0:
        print(f"fuzz: {len(TRIED)} bad inputs tried ({len(set(TRIED))} distinct), none gave a traceback, a hang or a non-finite checkpoint",
              flush=True)


# -- crafted bad files ----------------------------------------------------------------------------------------------------

def craft(context, kind):
    """A bad file (or folder) of one kind, and the command and arguments that read it."""
    root = Path(tempfile.mkdtemp(dir=context.root))
    ckpt = torch.load(context.ckpt, weights_only=True)
    if kind == "empty checkpoint":
        (root / "x.pt").write_bytes(b"")
        return "sample.py", [f"--ckpt={root / 'x.pt'}"]
    if kind == "random bytes as checkpoint":
        (root / "x.pt").write_bytes(os.urandom(4096))
        return "chat.py", [f"--ckpt={root / 'x.pt'}"]
    if kind == "truncated checkpoint":
        (root / "x.pt").write_bytes(context.ckpt.read_bytes()[:3000])
        return "evaluate.py", [f"--ckpt={root / 'x.pt'}", f"--data={context.text}"]
    if kind == "json as checkpoint":
        (root / "x.pt").write_text('{"model": {}}')
        return "export.py", [f"--ckpt={root / 'x.pt'}", f"--out_dir={root / 'out'}"]
    if kind == "checkpoint fields of the wrong types":
        ckpt["tokenizer"], ckpt["chat_tuned"] = 7, "yes"
        torch.save(ckpt, root / "x.pt")
        return "sample.py", [f"--ckpt={root / 'x.pt'}"]
    if kind == "checkpoint model settings of the wrong types":
        ckpt["model_config"]["n_head"] = "two"
        torch.save(ckpt, root / "x.pt")
        return "chat.py", [f"--ckpt={root / 'x.pt'}"]
    if kind == "config.json that is not JSON":
        (root / "config.json").write_text("{not json")
        return "sample.py", [f"--ckpt={root}"]
    if kind == "config.json of the wrong types":
        (root / "config.json").write_text(json.dumps({"model_type": "gptkit", "n_layer": [1], "n_embd": "16"}))
        return "train.py", [f"--init_from={root}", f"--data_dir={context.data}", f"--out_dir={root / 'out'}"]
    if kind == "meta.json of the wrong shape":
        (root / "meta.json").write_text(json.dumps({"tokenizer": "bytes", "vocab_size": 264, "dtype": "uint16", "splits": []}))
        return "evaluate.py", [f"--ckpt={context.ckpt}", f"--data={root}"]
    if kind == "a file as the prepared folder":
        return "train.py", [f"--data_dir={context.text}", f"--out_dir={root / 'out'}"]
    if kind == "a binary corpus":
        (root / "corpus.txt").write_bytes(os.urandom(8192))
        return "data/prepare.py", [str(root / "corpus.txt"), "--tokenizer=bytes", f"--out_dir={root / 'out'}"]
    if kind == "a folder as the conversations":
        return "train.py", [f"--init_from={context.ckpt}", f"--chat_data={root}", f"--out_dir={root / 'out'}"]
    if kind == "conversations that are not conversations":
        (root / "chats.jsonl").write_text('{"messages": [{"role": "robot", "content": 3}]}\n[1, 2]\n')
        return "train.py", [f"--init_from={context.ckpt}", f"--chat_data={root / 'chats.jsonl'}", f"--out_dir={root / 'out'}"]
    if kind == "metrics that are not metrics":
        (root / "metrics.jsonl").write_text("\x00\x01\n[]\n{}\n")
        return "plot.py", [str(root), f"--out={root / 'c.png'}"]
    if kind == "a folder as the prompt file":
        return "sample.py", [f"--ckpt={context.ckpt}", f"--prompt_file={root}"]
    raise AssertionError(kind)


CRAFTED = ["empty checkpoint", "random bytes as checkpoint", "truncated checkpoint", "json as checkpoint", "checkpoint fields of the wrong types",
           "checkpoint model settings of the wrong types", "config.json that is not JSON", "config.json of the wrong types",
           "meta.json of the wrong shape", "a file as the prepared folder", "a binary corpus", "a folder as the conversations",
           "conversations that are not conversations", "metrics that are not metrics", "a folder as the prompt file"]


@pytest.mark.parametrize("kind", CRAFTED)
def test_crafted_bad_files_are_one_line_errors(context, kind):
    script, args = craft(context, kind)
    cwd = tempfile.mkdtemp(dir=context.root)
    result = run_command(script, args, cwd)
    check_outcome(result, script, args, cwd)
    assert result.returncode == 2, f"{kind}: {script} accepted it:\n{result.stdout[-2000:]}"
