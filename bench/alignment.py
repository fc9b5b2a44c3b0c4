"""The offline alignment demo end to end, each stage a command a user would type, timed: python bench/alignment.py

Starts from the default pretrained model (python train.py -> out/). Stages: the demo's data; chat fine-tuning (SFT);
pairs of the fine-tuned model's own replies judged by a program (InstructGPT's comparisons, ties dropped); a reward
model; PPO against the learned reward model; DPO on the pairs; GRPO with the judge as the reward. Then every policy
replies to held-out prompts through the chat REPL's routine (ChatSession, temperature 0.3) and the judge scores them:
exact is the share of replies that are exactly the expected answer; KL is to the fine-tuned model (nats per reply,
sampled at temperature 1); the win rate is against the fine-tuned model (one reply each, ties count half).
Ends with one line: alignment: sft=... rm_acc=... ppo=... dpo=... grpo=...
"""
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gptkit.errors import UsageError, run_cli
from gptkit.machine import describe_machine, reproduce_command
from gptkit.options import option, parse_options

ROOT = Path(__file__).resolve().parent.parent  # the stages run from the checkout's root, as the README's commands do


@dataclass
class AlignmentBenchConfig:
    base: str = option("out", "the pretrained checkpoint to fine-tune (python train.py writes out/)")
    work: str = option("out_align_bench", "the folder every stage writes into (data, checkpoints, pairs)")
    reuse_sft: bool = option(False, "keep the fine-tuned model already in --work (skips the data and SFT stages)")


def run(argv, log):
    """Run one stage's command from the repo root; its output goes to `log`; returns (seconds, stdout)."""
    print(f"$ python {shlex.join(argv)}", flush=True)
    started = time.time()
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
    log.write(f"$ python {shlex.join(argv)}\n{done.stdout}{done.stderr}\n")
    if done.returncode:
        raise UsageError(f"stage failed: python {shlex.join(argv)}\n{done.stderr[-2000:]}")
    return time.time() - started, done.stdout


def main():
    cfg = parse_options(AlignmentBenchConfig, description=__doc__, positional=None)
    work = Path(cfg.work)
    data, sft = work / "data", work / "sft"
    work.mkdir(parents=True, exist_ok=True)
    times, figures = {}, {}
    with open(work / "bench.log", "a", encoding="utf-8") as log:
        if not cfg.reuse_sft:
            times["data"], _ = run(["data/alignment_demo.py", f"--out_dir={data}"], log)
            times["sft"], _ = run(["train.py", "config/align_sft.py", f"--init_from={cfg.base}", f"--chat_data={data / 'sft.jsonl'}",
                                   f"--out_dir={sft}", "--resume=false"], log)
        # training pairs from rankings of 4 replies (InstructGPT ranked 4 to 9); held-out pairs as the task defines a comparison, 2 replies
        t1, _ = run(["align.py", "pairs", f"--policy={sft}", f"--prompts={data / 'prompts.jsonl'}", f"--out={work / 'pairs.jsonl'}",
                     "--samples=4"], log)
        t2, _ = run(["align.py", "pairs", f"--policy={sft}", f"--prompts={data / 'heldout.jsonl'}", f"--out={work / 'heldout_pairs.jsonl'}",
                     "--seed=1"], log)
        times["pairs"] = t1 + t2
        times["reward"], _ = run(["train.py", "config/align_reward.py", f"--init_from={sft}", f"--pairs={work / 'pairs.jsonl'}",
                                  f"--out_dir={work / 'rm'}", "--resume=false"], log)
        _, out = run(["align.py", "score", f"--reward_model={work / 'rm'}", f"--pairs={work / 'heldout_pairs.jsonl'}", "--json"], log)
        figures["rm"] = json.loads(out.strip().splitlines()[-1])
        common = [f"--init_from={sft}", "--resume=false"]
        stages = {
            "ppo": ["train.py", "config/align_ppo.py", *common, f"--reward_model={work / 'rm'}", f"--prompts={data / 'prompts.jsonl'}",
                    f"--out_dir={work / 'ppo'}"],
            "dpo": ["train.py", "config/align_dpo.py", *common, f"--pairs={work / 'pairs.jsonl'}", f"--out_dir={work / 'dpo'}"],
            "grpo": ["train.py", "config/align_grpo.py", *common, f"--prompts={data / 'prompts.jsonl'}", f"--out_dir={work / 'grpo'}"],
        }
        for name, argv in stages.items():
            times[name], _ = run(argv, log)
        for name in ("sft", "ppo", "dpo", "grpo"):
            argv = ["align.py", "evaluate", f"--policy={work / name}", f"--prompts={data / 'heldout.jsonl'}", "--json"]
            argv += [f"--reference={sft}"] if name != "sft" else []
            times[f"eval_{name}"], out = run(argv, log)
            figures[name] = json.loads(out.strip().splitlines()[-1])

    print(f"\n{describe_machine('cpu')}")
    print(f"held-out prompts: {figures['sft']['n']}; replies through ChatSession at chat.py's temperature 0.3\n")
    print("| model | exact | mean judge score | KL to SFT (nats/reply) | win rate vs SFT | training time |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ("sft", "ppo", "dpo", "grpo"):
        f = figures[name]
        kl = f"{f['kl']:.2f}" if "kl" in f else "-"
        win = f"{100 * f['win_rate']:.1f}%" if "win_rate" in f else "-"
        print(f"| {name} | {100 * f['exact']:.1f}% | {f['score']:.3f} | {kl} | {win} | {times.get(name, 0):.0f} s |")
    rm = figures["rm"]
    print(f"\nreward model: pairwise accuracy {100 * rm['accuracy']:.1f}% on {rm['n']} held-out pairs (mean margin {rm['margin']:.2f}), "
          f"trained in {times['reward']:.0f} s")
    print(f"stage times (s): {', '.join(f'{k} {v:.0f}' for k, v in times.items())}; total {sum(times.values()) / 60:.1f} min")
    print(f"each stage's command and output: {work / 'bench.log'}; reproduce: {reproduce_command('bench/alignment.py', cfg)}")
    print(f"alignment: sft={figures['sft']['exact']:.2f} rm_acc={rm['accuracy']:.2f} ppo={figures['ppo']['exact']:.2f} "
          f"dpo={figures['dpo']['exact']:.2f} grpo={figures['grpo']['exact']:.2f}")


if __name__ == "__main__":
    run_cli(main)
