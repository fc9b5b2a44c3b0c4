"""Parallel layouts against one process: python bench/parallel.py [--layouts=tp2,pp2,fsdp2xtp2,pp2xtp2] [--key=value ...]

For each preset, trains one process and then each layout (through torchrun, gloo on a CPU) on the same global batch
for --steps steps, and compares the logged training losses step by step and the time per step. Then resharding: each
layout's sharded checkpoint from halfway (torch.distributed.checkpoint) continues in the same layout, whose remaining
losses must equal the straight run's exactly, and in another layout (or one process), whose must agree within float
rounding. The last line sums it up:

  parallel_parity: layouts=tp2,... max_loss_diff=... reshard=exact reshard_max_loss_diff=...

(reshard=exact when every same-layout continuation was bit-identical, else the largest difference.)

Per-step times on a CPU are a fact about overhead (collectives through gloo, every process on the same cores), not
a speed claim. Train options after the script's own (--steps, --layouts, --presets, --work_dir) go to every run.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gptkit.devices import pick_device
from gptkit.errors import UsageError, run_cli
from gptkit.machine import describe_machine
from gptkit.options import option, parse_options

REPO = Path(__file__).resolve().parent.parent
# A small model every layout can split: 4 heads, a vocabulary padded to a multiple of 64, 4 blocks.
MODEL = ["--n_layer=4", "--n_head=4", "--n_embd=128", "--block_size=64", "--batch_size=8", "--grad_accum=2", "--threads=1",
         "--device=cpu", "--warmup_iters=2", "--eval_tokens=4096", "--sample_tokens=0", "--log_interval=1", "--keep_last=100"]


@dataclass
class BenchConfig:
    steps: int = option(8, "training steps of each run (even: the reshard runs continue from the halfway checkpoint)", bounds="[2, 100000]")
    layouts: str = option("tp2,pp2,fsdp2xtp2,pp2xtp2", "comma-separated layouts: tpN or ppN alone, or combined with x: ddpM, fsdpM, "
                                                        "tpN, ppK (e.g. fsdp2xtp2, pp2xtp2: the product of processes)")
    presets: str = option("gpt2,modern", "comma-separated model presets to run")
    work_dir: str = option("out_parallel", "where the runs write")


def parse_layout(name):
    """(processes, train.py flags) of a layout name such as tp2, pp2xtp2 or fsdp2xtp2."""
    parts, flags, processes = name.split("x"), [], 1
    for part in parts:
        kind = part.rstrip("0123456789")
        if kind not in ("tp", "pp", "ddp", "fsdp") or kind == part:
            raise UsageError(f"--layouts: {name!r} is not a layout; write tp2, pp2, ddp2xtp2, fsdp2xtp2 or pp2xtp2")
        n = int(part[len(kind):])
        processes *= n
        flags.append(f"--{kind}={n}" if kind in ("tp", "pp") else f"--parallel={kind}")
    return processes, flags


def reshard_targets(name, names):
    """Where a layout's halfway checkpoint continues: the same layout, and another (the next listed; one process after the last)."""
    return [name, names[(names.index(name) + 1)] if names.index(name) + 1 < len(names) else "one"]


def train(out_dir, args, processes=1):
    """Run train.py (under torchrun for several processes); returns ({step: loss}, median seconds per step)."""
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*launcher, "train.py", *args, f"--out_dir={out_dir}"]
    started = time.time()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", **os.environ})
    if result.returncode:
        lines = [line for line in result.stderr.splitlines() if "error" in line.lower()] or result.stderr.splitlines() or ["?"]
        raise UsageError(f"{' '.join(command[-len(args) - 2:][:3])} ... failed: {lines[-1]}")
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    tokens_per_step = steps[-1]["tokens"] / steps[-1]["iter"] if steps else 0
    seconds = statistics.median(tokens_per_step / r["tokens_per_s"] for r in steps[1:]) if len(steps) > 1 else time.time() - started
    return {r["iter"]: r["loss"] for r in steps}, seconds


def loss_diff(got, expected):
    return max(abs(got[step] - expected[step]) for step in got)


def main():
    args = sys.argv[1:]
    own = [a for a in args if a.split("=")[0] in ("--steps", "--layouts", "--presets", "--work_dir", "-h", "--help")]
    cfg = parse_options(BenchConfig, own, description=__doc__, positional=None)
    if cfg.steps % 2:
        raise UsageError(f"--steps={cfg.steps}: use an even number (the reshard runs continue from step {cfg.steps // 2})")
    layouts = [(name, *parse_layout(name)) for name in cfg.layouts.split(",")]
    work = Path(cfg.work_dir)
    print(describe_machine(pick_device("cpu")))
    worst, worst_reshard, worst_same = 0.0, 0.0, 0.0
    names = [name for name, _, _ in layouts]
    layout_of = {name: (processes, flags) for name, processes, flags in layouts} | {"one": (1, [])}
    for preset in cfg.presets.split(","):
        common = [*MODEL, f"--preset={preset}", f"--max_iters={cfg.steps}", f"--eval_interval={cfg.steps // 2}", "--resume=auto",
                  *[a for a in args if a not in own]]
        shutil.rmtree(work / preset, ignore_errors=True)
        print(f"\n{preset}: {cfg.steps} steps of a 4 x 128 model, global batch 16 x 64 tokens")
        one, one_s = train(work / preset / "one", common)
        print(f"  {'one process':<14} {1000 * one_s:7.0f} ms/step")
        straight = {}
        for name, processes, flags in layouts:
            got, seconds = train(work / preset / name, [*common, *flags], processes)
            straight[name] = got
            diff = loss_diff(got, one)
            worst = max(worst, diff)
            print(f"  {name:<14} {1000 * seconds:7.0f} ms/step ({seconds / one_s:.2f}x one process) on {processes} processes, "
                  f"max loss difference {diff:.1e} over {len(got)} steps")
        # resharding: each layout's sharded checkpoint from halfway continues in the same layout and in another
        halfway = f"step_{cfg.steps // 2:07d}"
        for source in names:
            for target in reshard_targets(source, names):
                out = work / preset / f"{source}_to_{target}"
                shutil.copytree(work / preset / source / "sharded" / halfway, out / "sharded" / halfway)
                got, _ = train(out, [*common, *layout_of[target][1]], layout_of[target][0])
                diff = loss_diff(got, straight[source])
                if target == source:
                    worst_same = max(worst_same, diff)
                else:
                    worst_reshard = max(worst_reshard, diff)
                print(f"  {source + ' -> ' + target:<22} steps {min(got)}-{max(got)} from the sharded checkpoint: "
                      f"max loss difference {diff:.1e} from {source}'s straight run{' (same layout: must be 0)' if target == source else ''}")
    print(f"reproduce: python bench/parallel.py {' '.join(args)}".rstrip())
    same = "exact" if worst_same == 0 else f"{worst_same:.1e}"
    print(f"parallel_parity: layouts={cfg.layouts} max_loss_diff={worst:.1e} reshard={same} reshard_max_loss_diff={worst_reshard:.1e}")


if __name__ == "__main__":
    run_cli(main)
