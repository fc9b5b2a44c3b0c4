"""Feedback for alignment: judged pairs of a policy's replies, a reward model's accuracy on pairs, and a policy's
replies measured by a judge (align.py is the command line over these; bench/alignment.py runs the whole demo).

A judge is a Python function called as judge(reply_text, row) -> float, row being the prompt's JSONL fields
(gptkit/alignment_demo.py:judge is the demo's). Replies are measured through ChatSession with chat.py's sampling
defaults, so the figures are what a user of the REPL sees.
"""
import json
from dataclasses import replace

import torch
from tqdm import tqdm

from gptkit.chat_session import ChatSession
from gptkit.chat_template import messages_prompt, read_conversations
from gptkit.checkpoint import build_model
from gptkit.engine import SamplingOptions
from gptkit.errors import UsageError
from gptkit.files import atomic_write, check_output
from gptkit.loading import load_any_checkpoint
from gptkit.logprobs import last_scores, padded_rows
from gptkit.preferences import pair_ids, read_pairs, read_prompts, reply_ids
from gptkit.rl_objectives import kl_to_reference, reply_text, reward_function, sample_replies


def load_policy(spec, device):
    return build_model(load_any_checkpoint(spec), device)


def prompt_rows(path):
    """The rows of a prompts file, saying which were skipped."""
    rows, bad = read_prompts(path)
    if bad:
        print(f"note: {len(bad)} prompt rows skipped: {'; '.join(bad[:5])}")
    return rows


# -- pairs --------------------------------------------------------------------------------------------------------------

def make_pairs(cfg, device, policy=None, out=None):
    """--samples replies per prompt, judged; every two that the judge scores differently make a pair (InstructGPT
    ranked 4 to 9 replies per prompt the same way). Returns (pairs written, prompts whose replies all tied)."""
    check_output(out or cfg.out, "out")
    model, tokenizer = load_policy(policy or cfg.policy, device)
    judge, rows, k = reward_function(cfg.judge), prompt_rows(cfg.prompts), cfg.samples
    prompts = [messages_prompt(tokenizer, r.prompt) for r in rows]
    pairs, ties = [], 0
    for start in tqdm(range(0, len(rows), 32), desc="sampling pairs", unit="batch", disable=None):
        chunk = list(range(start, min(start + 32, len(rows))))
        replies = sample_replies(model, tokenizer, [prompts[i] for i in chunk for _ in range(k)], cfg.temperature, cfg.max_reply_tokens,
                                 [cfg.seed * 1_000_003 + k * i + n for i in chunk for n in range(k)])
        for j, i in enumerate(chunk):
            texts = list(dict.fromkeys(reply_text(tokenizer, r) for r, _ in replies[k * j:k * (j + 1)]))  # the same reply twice is no comparison
            scored = [(judge(text, rows[i].fields), text) for text in texts]
            found = [(a, b) for n, a in enumerate(scored) for b in scored[n + 1:] if a[0] != b[0]]
            ties += not found
            for a, b in found:
                (_, chosen), (_, rejected) = (a, b) if a[0] > b[0] else (b, a)
                pairs.append({"prompt": rows[i].prompt, "chosen": chosen, "rejected": rejected})
    with atomic_write(out or cfg.out, "wb") as f:
        for pair in pairs:
            f.write((json.dumps(pair) + "\n").encode("utf-8"))
    print(f"wrote {len(pairs):,} pairs to {out or cfg.out} ({ties:,} of {len(rows):,} prompts had replies all judged alike)")
    return len(pairs), ties


# -- score --------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def reply_scores(model, tokenizer, rows, device, batch_size=32):
    """The reward model's score of each (prompt ids, reply ids) row."""
    scores = []
    for start in range(0, len(rows), batch_size):
        padded, last = padded_rows([p + r for p, r in rows[start:start + batch_size]], tokenizer.eot_id)
        scores += last_scores(model, padded.to(device), last.to(device)).tolist()
    return scores


def score_pairs(reward_model, pairs_path, device):
    """(pairwise accuracy, mean margin, pairs) of a reward model on a pairs file."""
    model, tokenizer = build_model(load_any_checkpoint(reward_model), device, reward_model=True)
    pairs, bad = read_pairs(pairs_path)
    if bad:
        print(f"note: {len(bad)} rows skipped: {'; '.join(bad[:5])}")
    ids = [pair_ids(tokenizer, p) for p in pairs]
    chosen = reply_scores(model, tokenizer, [(p, c) for p, c, _ in ids], device)
    rejected = reply_scores(model, tokenizer, [(p, r) for p, _, r in ids], device)
    margins = [c - r for c, r in zip(chosen, rejected)]
    return sum(m > 0 for m in margins) / len(margins), sum(margins) / len(margins), len(margins)


def score_conversations(reward_model, path, device):
    """[(where, score)] of the last assistant reply of each conversation ({"messages": [...]} per line)."""
    model, tokenizer = build_model(load_any_checkpoint(reward_model), device, reward_model=True)
    rows, where = [], []
    for i, conversation in enumerate(read_conversations(path), 1):
        *prompt, last = conversation["messages"]
        if last["role"] != "assistant" or not prompt or prompt[-1]["role"] != "user":
            raise UsageError(f"{path}: conversation {i} must end with a user message and the assistant's reply to be scored")
        rows.append((messages_prompt(tokenizer, prompt), reply_ids(tokenizer, last["content"])))
        where.append(f"{path}:{i}")
    return list(zip(where, reply_scores(model, tokenizer, rows, device)))


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


def evaluate_policy(cfg, device, policy=None):
    """{"exact", "score", "kl", "win_rate", "n"}: the judge on --policy's replies (kl and win_rate with --reference)."""
    model, tokenizer = load_policy(policy or cfg.policy, device)
    judge, rows = reward_function(cfg.judge), prompt_rows(cfg.prompts)
    replies = chat_replies(model, tokenizer, rows, cfg.max_reply_tokens, cfg.seed)
    scores = [judge(reply, row.fields) for reply, row in zip(replies, rows)]
    result = {"exact": sum(s == 1.0 for s in scores) / len(scores), "score": sum(scores) / len(scores), "n": len(rows)}
    if cfg.reference:
        reference, _ = load_policy(cfg.reference, device)
        prompts = [messages_prompt(tokenizer, r.prompt) for r in rows]
        result["kl"] = kl_to_reference(model, reference, tokenizer, prompts, cfg.max_reply_tokens, device, seed=cfg.seed)
        theirs = chat_replies(reference, tokenizer, rows, cfg.max_reply_tokens, cfg.seed + 1)
        wins = [(s > t) + 0.5 * (s == t) for s, t in zip(scores, (judge(r, row.fields) for r, row in zip(theirs, rows)))]
        result["win_rate"] = sum(wins) / len(wins)
    return result


def describe(result, name):
    extra = f", KL {result['kl']:.3f} nats/reply, win rate {100 * result['win_rate']:.1f}%" if "kl" in result else ""
    return f"{name}: exact {100 * result['exact']:.1f}%, mean judge score {result['score']:.3f} on {result['n']} prompts{extra}"
