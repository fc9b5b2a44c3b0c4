"""Time to quality on Shakespeare: python bench/time_to_quality.py [CONFIG] [--key=value ...]

Trains on the first 90% of tinyshakespeare.txt (by characters, as nanoGPT's prepare.py splits it) and evaluates on
the last 10% (every validation token at every evaluation), until the validation bits per byte reach --target.
Prints the curve of bits per byte against wall seconds (training plus its evaluations, from the first step; data
preparation is timed apart) and ends with `time_to_quality: bpb=... wall_s=...`: the first evaluation at or under
the target, or the final one if none was. Reference on this project's 2-core machine: nanoGPT's CPU "baby GPT"
reaches 2.72 bits/byte (1.8857 nats per character) in 147 s.
"""
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gptkit.errors import UsageError, run_cli
from gptkit.evaluation import EvalConfig, evaluate_checkpoint
from gptkit.machine import describe_machine
from gptkit.options import option, parse_options
from gptkit.preparation import PrepareConfig, prepare
from gptkit.signals import TrainingStopped
from gptkit.train import train
from gptkit.train_config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


@dataclass
class BenchConfig:
    text: str = option(str(SHAKESPEARE), "the corpus: its first 90% (characters) is trained on, its last 10% scored")
    work_dir: str = option("out_ttq", "where the split text, the prepared data and the run go")
    target: float = option(2.72, "validation bits per byte to reach (nanoGPT's baby GPT reaches 2.72 in 147 s here)")


def split_text(path, work_dir):
    """train.txt and val.txt in work_dir: the first 90% of the characters, and the rest."""
    if not Path(path).is_file():
        raise UsageError(f"{path} does not exist; pass the corpus with --text=FILE")
    text = Path(path).read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "train.txt").write_text(text[:cut], encoding="utf-8")
    (work_dir / "val.txt").write_text(text[cut:], encoding="utf-8")
    return len(text[cut:].encode("utf-8"))


def main():
    args = sys.argv[1:]
    bench_keys = {f"--{name}" for name in BenchConfig.__dataclass_fields__}
    bench_args = [a for a in args if a.split("=")[0] in bench_keys or a in ("-h", "--help")]
    cfg = parse_options(BenchConfig, bench_args, description=__doc__, positional=None)
    work_dir = Path(cfg.work_dir)
    train_args = [a for a in args if a not in bench_args]
    run = parse_options(TrainConfig, train_args, description=__doc__, default_config="shakespeare_speedrun")

    started = time.time()
    val_bytes = split_text(cfg.text, work_dir)
    data_dir = work_dir / f"data-{run.tokenizer}{run.vocab_size}"
    prepare(PrepareConfig(inputs=[str(work_dir / "train.txt")], val_file=str(work_dir / "val.txt"), tokenizer=run.tokenizer,
                          vocab_size=run.vocab_size, out_dir=str(data_dir)))
    prep_s = time.time() - started

    run.data_dir, run.out_dir, run.resume, run.eval_tokens = str(data_dir), str(work_dir / "run"), "false", 0
    try:
        train(run)
    except TrainingStopped as stopped:  # a timing cut short measures nothing: say so and leave
        print(f"stopped by {stopped.signal_name} at step {stopped.step}; no time-to-quality figure", file=sys.stderr)
        sys.exit(128 + signal.Signals[stopped.signal_name].value)

    evals = [r for r in map(json.loads, (Path(run.out_dir) / "metrics.jsonl").read_text().splitlines()) if "val_bpb" in r]
    print(f"\n{describe_machine('cpu' if run.device == 'auto' and not torch.cuda.is_available() else run.device)}")
    final = evaluate_checkpoint(EvalConfig(ckpt=str(Path(run.out_dir) / "last.pt"), data=str(work_dir / "val.txt"), device=run.device))
    print(f"data: {cfg.text}: trained on the first 90%, scored on the last 10% ({val_bytes:,} bytes); preparation {prep_s:.1f} s, not counted")
    print(f"the final model on every byte of the last 10% (evaluate.py): {final['bpb']:.4f} bits/byte over {final['bytes']:,} bytes")
    print("curve (wall seconds since the first step -> validation bits per byte; train.py's evaluation scores every token "
          "after the first):")
    for r in evals:
        print(f"  {r['elapsed_s']:6.1f} s  step {r['iter']:5d}  {r['val_bpb']:.4f}")
    hit = next((r for r in evals if r["val_bpb"] <= cfg.target), evals[-1])
    print(f"reproduce: python bench/time_to_quality.py {' '.join(args)}".rstrip())
    print(f"time_to_quality: bpb={hit['val_bpb']:.3f} wall_s={hit['elapsed_s']:.1f}")


if __name__ == "__main__":
    run_cli(main)
