"""bench/time_to_quality.py on a tiny corpus: the split, the curve, and the final line it promises."""
import re

import pytest

from helpers import make_corpus, run_script


@pytest.mark.slow  # 12 s of CI's 15 minutes: a training run and an evaluation through the bench
def test_time_to_quality_prints_the_curve_and_the_first_time_under_the_target(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_corpus(3000), encoding="utf-8")
    args = [f"--text={corpus}", f"--work_dir={tmp_path / 'ttq'}", "--vocab_size=300", "--max_iters=8", "--eval_interval=4",
            "--n_embd=32", "--batch_size=4", "--block_size=32", "--threads=1"]
    result = run_script("bench/time_to_quality.py", "--target=9.0", *args)
    assert result.returncode == 0, result.stderr
    val = (tmp_path / "ttq" / "val.txt").read_text(encoding="utf-8")
    train = (tmp_path / "ttq" / "train.txt").read_text(encoding="utf-8")
    assert train + val == corpus.read_text(encoding="utf-8") and len(train) == int(len(train + val) * 0.9)
    curve = re.findall(r"^\s+([\d.]+) s\s+step\s+(\d+)\s+([\d.]+)$", result.stdout, re.M)
    assert [int(step) for _, step, _ in curve] == [0, 4, 8]
    last = result.stdout.strip().splitlines()[-1]
    bpb, wall = re.fullmatch(r"time_to_quality: bpb=([\d.]+) wall_s=([\d.]+)", last).groups()
    assert (bpb, wall) == (f"{float(curve[0][2]):.3f}", f"{float(curve[0][0]):.1f}")  # 9 bits/byte: the untrained model already
    assert f"{len(val.encode('utf-8')):,} bytes" in result.stdout and "reproduce: python bench/time_to_quality.py" in result.stdout

    unreachable = run_script("bench/time_to_quality.py", "--target=0.01", *args)
    final_wall = float(re.findall(r"^\s+([\d.]+) s\s+step\s+8\s", unreachable.stdout, re.M)[0])
    assert unreachable.stdout.strip().splitlines()[-1].endswith(f"wall_s={final_wall:.1f}")  # never reached: the final evaluation


def test_the_three_minute_config_parses_and_trains_a_bpe_model_on_shakespeares_split():
    from gptkit.options import parse_options
    from gptkit.train_config import TrainConfig, check_values

    cfg = parse_options(TrainConfig, ["config/shakespeare_2min.py"], description="")
    check_values(cfg)
    assert (cfg.tokenizer, cfg.vocab_size, cfg.n_layer, cfg.batch_size, cfg.weight_decay) == ("bpe", 1024, 3, 16, 0.3)
    assert cfg.eval_tokens == 0 and cfg.sample_tokens == 0  # every validation token scored; no sample in the timed run
