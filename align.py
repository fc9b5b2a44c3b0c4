"""Feedback for alignment: python align.py COMMAND [--key=value ...]

    pairs     sample two replies per prompt from --policy, let --judge pick the better one (ties dropped), write the pairs
              (TRL's prompt/chosen/rejected JSONL) for `train.py --objective=reward` or `--objective=dpo`
    score     a reward model's pairwise accuracy and mean margin on --pairs
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

import torch
from tqdm import tqdm

from gptkit.chat_session import ChatSession
from gptkit.chat_template import prompt_for_reply
from gptkit.checkpoint import build_model
from gptkit.devices import pick_device
from gptkit.engine import SamplingOptions
from gptkit.errors import UsageError, run_cli
from gptkit.files import atomic_write, check_output
from gptkit.loading import load_any_checkpoint
from gptkit.logprobs import last_scores, padded_rows, reply_batch, token_logprobs
from gptkit.options import option, parse_options
from gptkit.preferences import pair_ids, read_pairs, read_prompts
from gptkit.rl_objectives import reply_text, reward_function, sample_replies

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
    reference: str = option("", "evaluate: the model to compare with (KL and win rate), e.g. the fine-tuned one")
    temperature: float = option(1.0, "pairs: sampling temperature of the two replies (evaluate uses chat.py's, 0.3)", bounds=">0")
    max_reply_tokens: int = option(48, "the longest reply, in tokens", bounds="[1, 100000]")
    rounds: int = option(2, "rounds: how many", bounds="[1, 1000]")
    method: str = option("ppo", "rounds: how the policy learns from the round's feedback", ("ppo", "dpo"))
    reward_config: str = option("config/align_reward.py", "rounds: the config of each round's reward model")
    policy_config: str = option("", "rounds: the config of each round's policy step (default: config/align_ppo.py or config/align_dpo.py)")
    out_dir: str = option("align_rounds", "rounds: where each round's pairs and models go")
    seed: int = option(0, "random seed of the sampled replies", bounds="[0, 4611686018427387903]")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")


def load_policy(spec, device):
    model, tokenizer = build_model(load_any_checkpoint(spec), device)
    return model, tokenizer


def prompt_rows(path):
    rows, bad = read_prompts(path)
    if bad:
        print(f"note: {len(bad)} prompt rows skipped: {'; '.join(bad[:5])}")
    return rows


# -- pairs --------------------------------------------------------------------------------------------------------------

def make_pairs(cfg, device, policy=None, out=None):
    """Two sampled replies per prompt, judged; returns how many pairs were written and how many ties dropped."""
    check_output(out or cfg.out, "out")
    model, tokenizer = load_policy(policy or cfg.policy, device)
    judge, rows = reward_function(cfg.judge), prompt_rows(cfg.prompts)
    prompts = [prompt_for_reply(tokenizer, [(m["role"], tokenizer.encode(m["content"])) for m in r.prompt]) for r in rows]
    pairs, ties = [], 0
    for start in tqdm(range(0, len(rows), 32), desc="sampling pairs", unit="batch", disable=None):
        chunk = list(range(start, min(start + 32, len(rows))))
        doubled = [prompts[i] for i in chunk for _ in range(2)]
        replies = sample_replies(model, tokenizer, doubled, cfg.temperature, cfg.max_reply_tokens,
                                 [cfg.seed * 1_000_003 + 2 * i + k for i in chunk for k in range(2)])
        for j, i in enumerate(chunk):
            a, b = (reply_text(tokenizer, r) for r, _ in replies[2 * j:2 * j + 2])
            sa, sb = judge(a, rows[i].fields), judge(b, rows[i].fields)
            if sa == sb:
                ties += 1
                continue
            chosen, rejected = (a, b) if sa > sb else (b, a)
            pairs.append({"prompt": rows[i].prompt, "chosen": chosen, "rejected": rejected})
    with atomic_write(out or cfg.out, "wb") as f:
        for pair in pairs:
            f.write((json.dumps(pair) + "\n").encode("utf-8"))
    print(f"wrote {len(pairs):,} pairs to {out or cfg.out} ({ties:,} of {len(rows):,} prompts were ties, dropped)")
    return len(pairs), ties


# -- score --------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def score_pairs(reward_model, pairs_path, device):
    """(pairwise accuracy, mean margin, pairs) of a reward model on a pairs file."""
    model, tokenizer = build_model(load_any_checkpoint(reward_model), device, reward_model=True)
    pairs, bad = read_pairs(pairs_path)
    if bad:
        print(f"note: {len(bad)} rows skipped: {'; '.join(bad[:5])}")
    margins = []
    for start in range(0, len(pairs), 32):
        ids = [pair_ids(tokenizer, p) for p in pairs[start:start + 32]]
        rows = [p + c for p, c, _ in ids] + [p + r for p, _, r in ids]
        padded, last = padded_rows(rows, tokenizer.eot_id)
        scores = last_scores(model, padded.to(device), last.to(device))
        margins += (scores[:len(ids)] - scores[len(ids):]).tolist()
    accuracy = sum(m > 0 for m in margins) / len(margins)
    return accuracy, sum(margins) / len(margins), len(margins)


# -- evaluate -----------------------------------------------------------------------------------------------------------

def chat_replies(model, tokenizer, rows, max_tokens, seed):
    """One reply per prompt through ChatSession with chat.py's sampling defaults (temperature 0.3, top_k 50)."""
    options = replace(SamplingOptions(), temperature=0.3, max_new_tokens=max_tokens, seed=seed)
    session = ChatSession(model, tokenizer, options)
    replies = []
    for row in rows:
        session.load(row.prompt)
        replies.append("".join(session.reply()).strip())
    return replies


@torch.no_grad()
def kl_per_reply(policy, reference, tokenizer, prompts, max_tokens, seed):
    """Monte-Carlo KL(policy || reference) in nats per reply: replies sampled from the policy at temperature 1."""
    replies = sample_replies(policy, tokenizer, prompts, 1.0, max_tokens, [seed + i for i in range(len(prompts))])
    batch = reply_batch(prompts, [r or [tokenizer.eot_id] for r, _ in replies], tokenizer.eot_id).to(next(policy.parameters()).device)
    diff = token_logprobs(policy, batch, tokenizer.n_vocab) - token_logprobs(reference, batch, tokenizer.n_vocab)
    return diff.sum(1).mean().item()


def evaluate_policy(cfg, device, policy=None):
    """{"exact", "score", "kl", "win_rate", "n"}: the judge on --policy's replies (kl and win_rate with --reference)."""
    model, tokenizer = load_policy(policy or cfg.policy, device)
    judge, rows = reward_function(cfg.judge), prompt_rows(cfg.prompts)
    replies = chat_replies(model, tokenizer, rows, cfg.max_reply_tokens, cfg.seed)
    scores = [judge(reply, row.fields) for reply, row in zip(replies, rows)]
    result = {"exact": sum(s == 1.0 for s in scores) / len(scores), "score": sum(scores) / len(scores), "n": len(rows)}
    if cfg.reference:
        reference, _ = load_policy(cfg.reference, device)
        prompts = [prompt_for_reply(tokenizer, [(m["role"], tokenizer.encode(m["content"])) for m in r.prompt]) for r in rows]
        result["kl"] = kl_per_reply(model, reference, tokenizer, prompts, cfg.max_reply_tokens, cfg.seed)
        theirs = chat_replies(reference, tokenizer, rows, cfg.max_reply_tokens, cfg.seed + 1)
        wins = [(s > t) + 0.5 * (s == t) for s, t in zip(scores, (judge(r, row.fields) for r, row in zip(theirs, rows)))]
        result["win_rate"] = sum(wins) / len(wins)
    return result


def describe(result, name):
    extra = f", KL {result['kl']:.3f} nats/reply, win rate {100 * result['win_rate']:.1f}%" if "kl" in result else ""
    return f"{name}: exact {100 * result['exact']:.1f}%, mean judge score {result['score']:.3f} on {result['n']} prompts{extra}"


# -- rounds -------------------------------------------------------------------------------------------------------------

def run_rounds(cfg, device):
    """Pairs from the current policy, a reward model on them, then the policy's step; the reference stays the first policy."""
    policy, reference = cfg.policy, cfg.policy
    policy_config = cfg.policy_config or f"config/align_{cfg.method}.py"
    for n in range(1, cfg.rounds + 1):
        folder = Path(cfg.out_dir) / f"round_{n}"
        folder.mkdir(parents=True, exist_ok=True)
        print(f"== round {n}: pairs from {policy}")
        make_pairs(replace(cfg, seed=cfg.seed + n), device, policy=policy, out=str(folder / "pairs.jsonl"))
        reward = [cfg.reward_config, f"--init_from={policy}", f"--pairs={folder / 'pairs.jsonl'}", f"--out_dir={folder / 'reward'}"]
        step = [policy_config, f"--init_from={policy}", f"--ref_from={reference}", f"--out_dir={folder / 'policy'}"]
        step += [f"--reward_model={folder / 'reward'}", f"--prompts={cfg.prompts}"] if cfg.method == "ppo" else [f"--pairs={folder / 'pairs.jsonl'}"]
        for argv in ([reward] if cfg.method == "ppo" else []) + [step]:
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
    needs = {"pairs": ("policy", "prompts"), "evaluate": ("policy", "prompts"), "rounds": ("policy", "prompts"), "score": ("reward_model", "pairs")}
    for name in needs[command]:
        if not getattr(cfg, name):
            raise UsageError(f"align.py {command} needs --{name}")
    if command == "pairs":
        make_pairs(cfg, device)
    elif command == "score":
        accuracy, margin, n = score_pairs(cfg.reward_model, cfg.pairs, device)
        print(f"{cfg.reward_model}: pairwise accuracy {100 * accuracy:.1f}% on {n} pairs, mean margin {margin:.3f}")
    elif command == "evaluate":
        print(describe(evaluate_policy(cfg, device), cfg.policy))
    else:
        run_rounds(cfg, device)


def cli():
    """The gptkit-align command, and `python align.py`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
