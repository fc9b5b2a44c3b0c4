"""Feedback for alignment: python align.py COMMAND [--key=value ...]

    pairs     sample --samples replies per prompt from --policy, let --judge order them (ties dropped), write the pairs
              (TRL's prompt/chosen/rejected JSONL) for `train.py --objective=reward` or `--objective=dpo`
    score     a reward model's pairwise accuracy and mean margin on --pairs, or its score of each conversation's last
              reply in --conversations
    evaluate  --policy's replies to --prompts through the chat REPL's own routine (ChatSession, chat.py's sampling
              defaults): the judge's exact rate and mean score; with --reference also the KL to it and the win rate against it
    rounds    InstructGPT's loop, --rounds times: pairs from the current policy, a reward model on them, then PPO (or DPO)
              from the current policy; each round's models in --out_dir/round_N/

The judge is a Python function `module:function` called as function(reply_text, row) -> float, row being the prompt's
JSONL fields (gptkit/alignment_demo.py:judge is the demo's). docs/alignment.md walks through the whole demo.
"""
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from gptkit.devices import pick_device
from gptkit.errors import UsageError, run_cli
from gptkit.feedback import describe, evaluate_policy, make_pairs, score_conversations, score_pairs
from gptkit.options import option, parse_options

COMMANDS = ("pairs", "score", "evaluate", "rounds")


@dataclass
class AlignConfig:
    command: list[str] = option([], f"what to do: one of {', '.join(COMMANDS)}")
    policy: str = option("", "pairs/evaluate/rounds: the checkpoint that writes replies (a fine-tuned model)")
    prompts: str = option("", "pairs/evaluate/rounds: a .jsonl file of {\"prompt\": [messages] or text, ...fields for the judge}")
    judge: str = option("gptkit.alignment_demo:judge", "pairs/evaluate/rounds: the judge, module:function(reply_text, row) -> float")
    out: str = option("pairs.jsonl", "pairs: the JSONL file to write")
    reward_model: str = option("", "score: the reward model checkpoint")
    pairs: str = option("", "score: preference pairs (.jsonl)")
    conversations: str = option("", "score: conversations ({\"messages\": [...]} per line), each scored on its last reply")
    reference: str = option("", "evaluate: the model to compare with (KL and win rate), e.g. the fine-tuned one")
    samples: int = option(2, "pairs: replies sampled per prompt; every two the judge scores differently make a pair", bounds="[2, 64]")
    temperature: float = option(1.0, "pairs: sampling temperature of the two replies (evaluate uses chat.py's, 0.3)", bounds=">0")
    max_reply_tokens: int = option(48, "the longest reply, in tokens", bounds="[1, 100000]")
    rounds: int = option(2, "rounds: how many", bounds="[1, 1000]")
    method: str = option("ppo", "rounds: how the policy learns from the round's feedback", ("ppo", "dpo"))
    reward_config: str = option("config/align_reward.py", "rounds: the config of each round's reward model")
    policy_config: str = option("", "rounds: the config of each round's policy step (default: config/align_ppo.py or config/align_dpo.py)")
    out_dir: str = option("align_rounds", "rounds: where each round's pairs and models go")
    train_options: list[str] = option([], "rounds: more train.py options for every training stage, e.g. --train_options=--block_size=256")
    json: bool = option(False, "score/evaluate: print the figures as one JSON object")
    seed: int = option(0, "random seed of the sampled replies", bounds="[0, 4611686018427387903]")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")


# -- rounds -------------------------------------------------------------------------------------------------------------

def run_rounds(cfg, device):
    """Pairs from the current policy, a reward model on them, then the policy's step; the reference stays the first policy."""
    policy, reference = cfg.policy, cfg.policy
    policy_config = cfg.policy_config or f"config/align_{cfg.method}.py"
    for n in range(1, cfg.rounds + 1):
        folder = Path(cfg.out_dir) / f"round_{n}"
        folder.mkdir(parents=True, exist_ok=True)
        print(f"== round {n}: pairs from {policy}")
        written, ties = make_pairs(replace(cfg, seed=cfg.seed + n), device, policy=policy, out=str(folder / "pairs.jsonl"))
        if not written:
            raise UsageError(f"round {n}: the judge scored both replies alike for all {ties} prompts, so there is nothing to learn from; "
                             "use more prompts, a higher --temperature, or a judge that tells replies apart")
        reward = [cfg.reward_config, f"--init_from={policy}", f"--pairs={folder / 'pairs.jsonl'}", f"--out_dir={folder / 'reward'}"]
        step = [policy_config, f"--init_from={policy}", f"--ref_from={reference}", f"--out_dir={folder / 'policy'}"]
        step += [f"--reward_model={folder / 'reward'}", f"--prompts={cfg.prompts}"] if cfg.method == "ppo" else [f"--pairs={folder / 'pairs.jsonl'}"]
        for argv in ([reward] if cfg.method == "ppo" else []) + [step]:
            argv += cfg.train_options
            print(f"== python train.py {shlex.join(argv)}", flush=True)
            if subprocess.run([sys.executable, "-m", "gptkit.train", *argv]).returncode:  # its own process, as a user would run it
                raise UsageError(f"round {n} stopped: python train.py {shlex.join(argv)} failed (see above); fix it and run the rounds again")
        policy = str(folder / "policy")
    print(f"the last round's policy: {policy}")


def main():
    cfg = parse_options(AlignConfig, description=__doc__, positional="command")
    if len(cfg.command) != 1 or cfg.command[0] not in COMMANDS:
        raise UsageError(f"give one command: {', '.join(COMMANDS)} (python align.py --help)")
    command, device = cfg.command[0], pick_device(cfg.device)
    needs = {"pairs": ("policy", "prompts"), "evaluate": ("policy", "prompts"), "rounds": ("policy", "prompts"), "score": ("reward_model",)}
    for name in needs[command]:
        if not getattr(cfg, name):
            raise UsageError(f"align.py {command} needs --{name}")
    if command == "score" and bool(cfg.pairs) == bool(cfg.conversations):
        raise UsageError("align.py score needs --pairs=FILE (pairwise accuracy) or --conversations=FILE (a score each), one of them")
    if command == "pairs":
        make_pairs(cfg, device)
    elif command == "score" and cfg.conversations:
        for where, score in score_conversations(cfg.reward_model, cfg.conversations, device):
            print(json.dumps({"where": where, "score": score}) if cfg.json else f"{where}\t{score:.4f}")
    elif command == "score":
        accuracy, margin, n = score_pairs(cfg.reward_model, cfg.pairs, device)
        print(json.dumps({"accuracy": accuracy, "margin": margin, "n": n}) if cfg.json else
              f"{cfg.reward_model}: pairwise accuracy {100 * accuracy:.1f}% on {n} pairs, mean margin {margin:.3f}")
    elif command == "evaluate":
        result = evaluate_policy(cfg, device)
        print(json.dumps(result) if cfg.json else describe(result, cfg.policy))
    else:
        run_rounds(cfg, device)


def cli():
    """The gptkit-align command, and `python align.py`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
