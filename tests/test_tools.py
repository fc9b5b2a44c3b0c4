"""evaluate.py (loss, perplexity, bits per byte of any text), plot.py (training curves) and model_card.py."""
import json
import math
import shlex
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from gptkit.checkpoint import save_checkpoint
from gptkit.errors import UsageError
from gptkit.evaluation import EvalConfig, evaluate_checkpoint
from helpers import run_script, tiny_model

TEXT = "the cat sees the fish. naïve café, 你好 🙂\nmy friend finds a red ball.\n" * 3  # multi-byte characters on purpose
BLOCK = 16


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def bytes_ckpt(tmp_path, bytes_tok):
    """A tiny byte-level model (context 16) saved as a checkpoint."""
    model = tiny_model(vocab_size=320, block_size=BLOCK, seed=3, scale=0.3)
    save_checkpoint(tmp_path / "model.pt", model, bytes_tok, step=5)
    return tmp_path / "model.pt", model


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def score(ckpt, data, **options):
    return evaluate_checkpoint(EvalConfig(ckpt=str(ckpt), data=str(data), device="cpu", **options))


# evaluate.py

def test_bits_per_byte_of_byte_tokens_is_the_loss_in_bits(bytes_ckpt, text_file):
    result = score(bytes_ckpt[0], text_file)
    n_bytes = len(TEXT.encode("utf-8"))
    assert result["tokens"] == result["bytes"] == n_bytes  # every byte scored once, nothing else
    assert result["bpb"] == pytest.approx(result["loss"] / math.log(2), rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-9)
    assert result["block_size"] == BLOCK


def test_text_is_scored_from_its_first_token_in_non_overlapping_windows(bytes_ckpt, text_file, bytes_tok):
    """The loss is the mean over every token of the text, each predicted from its window's earlier tokens after
    <|endoftext|> (a document start), the last window shorter."""
    _, model = bytes_ckpt
    sequence = [bytes_tok.eot_id, *bytes_tok.encode(TEXT)]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(sequence) - 1, BLOCK):
            x = torch.tensor([sequence[start:start + BLOCK]])
            y = torch.tensor(sequence[start + 1:start + BLOCK + 1])
            logits = model(x[:, :len(y)])[0]
            total += F.cross_entropy(logits, y, reduction="sum").item()
            count += len(y)
    assert (len(sequence) - 1) % BLOCK  # the text ends in a partial window, which is scored too
    assert score(bytes_ckpt[0], text_file)["loss"] == pytest.approx(total / count, rel=1e-5)


def test_shorter_windows_and_a_token_budget(bytes_ckpt, text_file):
    full = score(bytes_ckpt[0], text_file)
    short = score(bytes_ckpt[0], text_file, block_size=4, batch_size=3)
    assert short["block_size"] == 4 and short["tokens"] == full["tokens"]
    assert short["loss"] > full["loss"]  # less context per token
    assert score(bytes_ckpt[0], text_file, max_tokens=37)["tokens"] == 37


def test_prepared_folder_agrees_with_the_same_text_as_a_file(tmp_path, bytes_ckpt, text_file, corpus_file):
    from gptkit.preparation import PrepareConfig, prepare

    folder = tmp_path / "prepared"
    prepare(PrepareConfig(inputs=[str(corpus_file)], val_file=str(text_file), tokenizer="bytes", out_dir=str(folder)))
    as_file, as_folder = score(bytes_ckpt[0], text_file), score(bytes_ckpt[0], folder, split="val")
    assert as_folder["split"] == "val" and as_file["split"] is None
    assert as_folder["bytes"] == as_file["bytes"]
    assert as_folder["tokens"] == as_file["tokens"] + 1  # the shard's <|endoftext|> after the document: no bytes
    assert as_folder["bpb"] == pytest.approx(as_file["bpb"], rel=1e-5)


def test_text_errors_are_usage_errors(tmp_path, bytes_ckpt, text_file):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UsageError, match="is empty"):
        score(bytes_ckpt[0], empty)
    with pytest.raises(UsageError, match="longer than the model's context"):
        score(bytes_ckpt[0], text_file, block_size=BLOCK + 1)
    with pytest.raises(UsageError, match="--split applies to prepared folders"):
        score(bytes_ckpt[0], text_file, split="train")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(UsageError, match="not UTF-8"):
        score(bytes_ckpt[0], latin1)


def test_cli_prints_a_summary_and_a_command_that_reproduces_it(bytes_ckpt, text_file):
    printed = run_script("evaluate.py", f"--ckpt={bytes_ckpt[0]}", f"--data={text_file}", "--device=cpu")
    assert printed.returncode == 0, printed.stderr
    summary, reproduce = printed.stdout.strip().splitlines()
    assert "nats/token" in summary and "perplexity" in summary and "bits/byte" in summary
    assert reproduce.startswith("reproduce: python evaluate.py ")
    again = run_script(*shlex.split(reproduce.removeprefix("reproduce: python ")), "--device=cpu", "--json")
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert f"loss {result['loss']:.4f} nats/token" in summary and f"{result['bpb']:.4f} bits/byte" in summary
    assert result["tokens"] == len(TEXT.encode("utf-8"))


def test_cli_refuses_a_folder_prepared_with_another_tokenizer(tmp_path, bpe_tok, data_dir):
    save_checkpoint(tmp_path / "bpe.pt", tiny_model(vocab_size=448, block_size=BLOCK), bpe_tok)
    result = run_script("evaluate.py", f"--ckpt={tmp_path / 'bpe.pt'}", f"--data={data_dir}", "--device=cpu")
    assert_one_line_error(result, "different tokenizer", "bytes", "bpe", "--data=FILE")


def test_cli_missing_data_file_is_one_line(tmp_path, bytes_ckpt):
    missing = tmp_path / "nowhere.txt"
    assert_one_line_error(run_script("evaluate.py", f"--ckpt={bytes_ckpt[0]}", f"--data={missing}"), str(missing), "does not exist")


# plot.py

def write_metrics(folder, lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(line if isinstance(line, str) else json.dumps(line) + "\n" for line in lines))
    return folder


def run_records(n_steps=40, scale=1.0):
    records = [{"iter": 0, "tokens": 0, "val_loss": 5.5 * scale, "val_bpb": 4.0 * scale}]
    for step in range(10, n_steps + 1, 10):
        records.append({"iter": step, "tokens": step * 512, "loss": scale * 5 / (1 + step / 10), "lr": 1e-3 * min(1, step / 20),
                        "tokens_per_s": 1000.0, "skipped_steps": 0})
        if step % 20 == 0:
            records.append({"iter": step, "tokens": step * 512, "val_loss": scale * 5 / (1 + step / 15), "val_bpb": scale * 3 / (1 + step / 15)})
    return records


def assert_png(path):
    from matplotlib.image import imread

    from gptkit.plotting import DPI, FIGSIZE

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(path).shape[:2] == (FIGSIZE[1] * DPI, FIGSIZE[0] * DPI)
    assert not list(path.parent.glob(f".{path.name}.tmp*"))  # written atomically: no temporary left


def test_plot_cli_writes_a_png_from_a_hand_written_metrics_file(tmp_path):
    pytest.importorskip("matplotlib")
    run = write_metrics(tmp_path / "run", run_records())
    out = tmp_path / "curves.png"
    result = run_script("plot.py", run / "metrics.jsonl", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert_png(out)
    assert "run: 4 training and 3 validation points" in result.stdout


def test_plot_two_runs_on_one_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from gptkit.plotting import plot_runs

    first = write_metrics(tmp_path / "small", run_records())
    second = write_metrics(tmp_path / "large", run_records(60, scale=0.8))
    out = tmp_path / "figures" / "both.png"
    runs = plot_runs([first, second], out)
    assert [r.label for r in runs] == ["small", "large"]
    assert [len(r.evals) for r in runs] == [3, 4]
    assert_png(out)


def test_plot_skips_malformed_lines_and_counts_them(tmp_path):
    pytest.importorskip("matplotlib")
    lines = [*run_records(), "not json\n", "[1, 2]\n", '{"iter": 50, "tokens": "many", "loss": 1.0}\n', '{"iter": 50, "tokens": 25600, "lo']
    run = write_metrics(tmp_path / "crashed", lines)
    result = run_script("plot.py", run, f"--out={tmp_path / 'c.png'}")
    assert result.returncode == 0, result.stderr
    assert "skipped 4 malformed lines" in result.stdout
    assert_png(tmp_path / "c.png")


def test_a_resumed_run_replaces_the_steps_it_logs_again(tmp_path):
    from gptkit.plotting import read_metrics

    # Saved at step 20, logged to 40, killed; resumed from 20: it evaluates step 20 again and logs 30, 40 anew.
    first, resumed = run_records(40), [r for r in run_records(40, scale=0.5) if r["iter"] >= 20 and not ("loss" in r and r["iter"] == 20)]
    train, evals, skipped = read_metrics(write_metrics(tmp_path / "run", first + resumed))
    assert skipped == 0
    assert [r["iter"] for r in train] == [10, 20, 30, 40] and [r["iter"] for r in evals] == [0, 20, 40]
    assert train[2]["loss"] == resumed[1]["loss"] and evals[1]["val_loss"] == resumed[0]["val_loss"]


def test_plot_missing_or_empty_metrics_are_clear_errors(tmp_path):
    from gptkit.plotting import read_metrics

    assert_one_line_error(run_script("plot.py", tmp_path / "nowhere", f"--out={tmp_path / 'x.png'}"), "nowhere", "does not exist")
    with pytest.raises(UsageError, match="holds no metrics"):
        read_metrics(write_metrics(tmp_path / "empty", []))
    with pytest.raises(UsageError, match=r"holds no metrics \(2 malformed lines\)"):
        read_metrics(write_metrics(tmp_path / "garbage", ["oops\n", "{}\n"]))


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch):
    import plot
    from gptkit import plotting

    def missing():
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(plotting, "_matplotlib", missing)
    monkeypatch.setattr("sys.argv", ["plot.py", str(write_metrics(tmp_path / "run", run_records()))])
    with pytest.raises(UsageError, match=r"pip install matplotlib.*pip install -e \"\.\[plot\]\""):
        plot.main()
    with pytest.raises(ImportError):  # what train.py ignores
        plotting.plot_runs([tmp_path / "run"], tmp_path / "c.png")


# model_card.py

def test_model_card_holds_the_numbers_given(tmp_path):
    from gptkit.model_card import write_model_card
    from gptkit.train_config import TrainConfig

    model_config = vars(tiny_model(preset="modern", vocab_size=320).config)
    path = write_model_card(tmp_path / "run", model_config=model_config, train_config=asdict(TrainConfig(max_iters=900)),
                            n_params=1_234_567, step=800, tokens_seen=3_276_800, tokenizer_kind="bytes", n_vocab=264,
                            latest={"val_loss": 1.5, "val_bpb": 2.1640}, best={"val_loss": 1.4, "val_bpb": 2.0202, "step": 700})
    card = path.read_text()
    assert path.name == "MODEL_CARD.md" and not list(path.parent.glob(".*tmp*"))
    for expected in ("1,234,567", "1.23M", "3,276,800", "800 of 900", "2.1640", "2.0202", "1.5000", f"{math.exp(1.5):.2f}",
                     "modern preset", "bytes, 264 ids", "Not fine-tuned for chat", "python sample.py --ckpt="):
        assert expected in card, expected


def test_model_card_training_command_resumes_the_same_run(tmp_path):
    from gptkit.model_card import training_command
    from gptkit.options import parse_options
    from gptkit.train_config import TrainConfig

    cfg = parse_options(TrainConfig, ["shakespeare", "--lr=0.002", "--sample_prompt=ROMEO: ", "--pos_encoding=learned"], description="")
    command = training_command(asdict(cfg), tmp_path / "my run")
    argv = shlex.split(command)
    assert argv[:2] == ["python", "train.py"]
    again = parse_options(TrainConfig, argv[2:], description="", default_config="default")
    assert asdict(again) == {**asdict(cfg), "out_dir": str(tmp_path / "my run")}


def test_model_card_cli_regenerates_it_from_a_checkpoint(tmp_path, bytes_tok):
    from gptkit.checkpoint import BEST, LAST
    from gptkit.train_config import TrainConfig

    run = tmp_path / "run"
    model = tiny_model(preset="modern", vocab_size=320, block_size=BLOCK)
    train_config = asdict(TrainConfig(out_dir=str(run), chat_data="chats.jsonl", init_from="out"))
    save_checkpoint(run / BEST, model, bytes_tok, train_config=train_config, step=20, chat_tuned=True, val_loss=1.25, val_bpb=1.7034)
    save_checkpoint(run / LAST, model, bytes_tok, train_config=train_config, step=30, best_val_loss=1.25, tokens_seen=15_360, chat_tuned=True)
    write_metrics(run, [{"iter": 30, "tokens": 15_360, "val_loss": 1.3, "val_bpb": 1.8765}])
    result = run_script("-m", "gptkit.model_card", f"--ckpt={run}")
    assert result.returncode == 0, result.stderr
    card = (run / "MODEL_CARD.md").read_text()
    for expected in (f"{model.num_params():,}", "15,360", "| this checkpoint | 30 | 1.3000", "1.8765", "| best | 20 | 1.2500", "1.7034",
                     "Fine-tuned for chat", "conversations from chats.jsonl, starting from out", "python chat.py --ckpt="):
        assert expected in card, expected
