"""The cost of --parallel=ddp at world size 1: python bench/ddp_overhead.py [CONFIG] [--key=value ...]

Runs train.py twice with the same config (default: config/default.py, 60 steps): once plainly, once as one process
of `torchrun --nproc_per_node=1 ... --parallel=ddp`, and compares the training tokens/s they log (evaluation time is
already kept out of it), ignoring the first logged window (warm-up). The goal on a GPU is under 3% overhead.
Train options after the script's own (--steps, --work_dir) go to both runs.
"""
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from gptkit.devices import pick_device
from gptkit.errors import UsageError, run_cli
from gptkit.machine import describe_machine
from gptkit.options import option, parse_options

REPO = Path(__file__).resolve().parent.parent


@dataclass
class BenchConfig:
    steps: int = option(60, "training steps of each run")
    work_dir: str = option("out_ddp_overhead", "where the two runs write")


def run(command, out_dir):
    """Run train.py (plainly or under torchrun); return its logged windows after the first (tokens/s, and MFU on GPUs)."""
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        raise UsageError(f"{' '.join(command[:4])} ... failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    windows = [r for r in map(json.loads, (out_dir / "metrics.jsonl").read_text().splitlines()) if "tokens_per_s" in r]
    if len(windows) < 2:
        raise UsageError("too few logged windows to compare; raise --steps")
    return windows[1:]


def describe(windows):
    rate = statistics.median(r["tokens_per_s"] for r in windows)
    mfu = f", MFU {100 * statistics.median(r['mfu'] for r in windows):.1f}%" if "mfu" in windows[0] else ""
    return rate, f"{rate:,.0f} tokens/s{mfu} (median of {len(windows)} windows of 10 steps)"


def main():
    args = sys.argv[1:]
    own = [a for a in args if a.split("=")[0] in ("--steps", "--work_dir", "-h", "--help")]
    cfg = parse_options(BenchConfig, own, description=__doc__, positional=None)
    train_args = [a for a in args if a not in own]
    work = Path(cfg.work_dir)
    common = [f"--max_iters={cfg.steps}", "--eval_interval=100000", "--log_interval=10", "--sample_tokens=0", "--resume=false", *train_args]
    plain = run([sys.executable, "train.py", *common, f"--out_dir={work / 'plain'}"], work / "plain")
    ddp = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train.py", *common,
               "--parallel=ddp", f"--out_dir={work / 'ddp'}"], work / "ddp")
    (plain_rate, plain_text), (ddp_rate, ddp_text) = describe(plain), describe(ddp)
    print(describe_machine(pick_device("auto")))
    print(f"plain:            {plain_text}")
    print(f"ddp, 1 process:   {ddp_text}")
    print(f"ddp overhead: {100 * (plain_rate - ddp_rate) / plain_rate:+.1f}% (goal on a GPU: under 3%)")
    print(f"reproduce: python bench/ddp_overhead.py {' '.join(args)}".rstrip())


if __name__ == "__main__":
    run_cli(main)
