"""Learning from comparisons: a reward model (Bradley-Terry) and DPO, objectives of train.py's one loop.

Both read preference pairs (gptkit/preferences.py): a prompt, a chosen reply and a rejected one. Each reply is scored
alone after its prompt (gptkit/logprobs.py), the prompt and reply tokenized apart.
- RewardModel trains a GPT with a score head (GPTConfig.score_head) so that score(chosen) > score(rejected): the loss is
  -log sigmoid(score_c - score_r), the score read at the reply's last token, its end-of-turn.
- DPO trains the policy itself: with h = (log pi(c) - log ref(c)) - (log pi(r) - log ref(r)) the loss is
  -log sigmoid(beta h) ("sigmoid", ln 2 while pi = ref) or (h - 1/(2 beta))^2 ("ipo"). The reference's log-probs are
  computed once, before training, so only the policy stays in memory.
Pairs are held out by prompt: every pair of a held-out prompt is validation, so accuracy is measured on prompts
never trained on.
"""
import json

import numpy as np
import torch
import torch.nn.functional as F

from gptkit.checkpoint import build_model
from gptkit.errors import UsageError
from gptkit.loader import IndexBatches
from gptkit.loading import load_any_checkpoint
from gptkit.logprobs import last_scores, padded_rows, reply_batch, sequence_logprobs
from gptkit.objective_base import Objective, Tally
from gptkit.preferences import dataset_pairs, pair_ids, read_pairs


def held_out_split(keys, val_fraction, seed):
    """(train indices, held-out indices) with every index of a held-out key held out: a random val_fraction of the keys."""
    distinct = sorted(set(keys))
    if len(distinct) < 2 or val_fraction <= 0:
        raise UsageError(f"alignment holds out prompts for validation; use at least 2 distinct prompts and --val_fraction > 0 (have {len(distinct)})")
    n_held = min(len(distinct) - 1, max(1, round(val_fraction * len(distinct))))
    held = {distinct[i] for i in np.random.default_rng(seed).permutation(len(distinct))[:n_held]}
    return [i for i, k in enumerate(keys) if k not in held], [i for i, k in enumerate(keys) if k in held]


def prompt_key(messages):
    return json.dumps(messages, sort_keys=True)


def frozen_model(spec, tokenizer, device, what):
    """A checkpoint loaded for scoring only (a reference or a reward model): eval mode, no gradients, the same tokenizer."""
    ckpt = load_any_checkpoint(spec)
    if ckpt["tokenizer"] != tokenizer.to_json():
        raise UsageError(f"{ckpt['path']} ({what}) uses a different tokenizer than the model being trained; align models that share one")
    if ckpt["model_config"].get("score_head") and what != "reward model":
        raise UsageError(f"{ckpt['path']} is a reward model; the {what} must be a policy (a model that writes replies)")
    model, _ = build_model(ckpt, device, reward_model=what == "reward model")
    model.requires_grad_(False)
    return model


def preference_pairs(cfg, tokenizer):
    """Tokenized pairs (prompt_ids, chosen_ids, rejected_ids) that fit the context, and their held-out split."""
    if cfg.pairs_dataset:
        pairs, bad = dataset_pairs(cfg.pairs_dataset)
        source = f"dataset {cfg.pairs_dataset}"
    elif cfg.pairs:
        pairs, bad = read_pairs(cfg.pairs)
        source = cfg.pairs
    else:
        raise UsageError(f"--objective={cfg.objective} learns from preference pairs: give --pairs=FILE.jsonl or --pairs_dataset=NAME")
    if bad:
        print(f"note: {len(bad)} preference rows skipped: {'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    rows, too_long = [], 0
    for pair in pairs:
        prompt, chosen, rejected = pair_ids(tokenizer, pair)
        if len(prompt) + max(len(chosen), len(rejected)) > cfg.block_size:
            too_long += 1
            continue
        rows.append((prompt, chosen, rejected, prompt_key(pair.prompt)))
    if too_long:
        print(f"note: {too_long} pairs longer than --block_size={cfg.block_size} left out; raise --block_size to keep them")
    if not rows:
        raise UsageError(f"{source}: no preference pair fits --block_size={cfg.block_size}")
    train, held = held_out_split([r[3] for r in rows], cfg.val_fraction, cfg.seed)
    return [rows[i][:3] for i in train], [rows[i][:3] for i in held], f"{source} ({len(train):,} pairs to train on, {len(held):,} held out)"


class PairObjective(Objective):
    """Pairs in batches of --batch_size; the loss of a batch scores its 2B replies in one forward."""

    chat_tuned = True

    def __init__(self, tokenizer, train_rows, val_rows, summary, batch_size, seed):
        self.tokenizer, self.train_rows, self.val_rows, self.summary = tokenizer, train_rows, val_rows, summary
        self.batch_size, self.pad = batch_size, tokenizer.eot_id
        self.train_batches = IndexBatches(len(train_rows), batch_size, seed)
        self.tally = Tally()

    def describe_batch(self, cfg):
        return f"{cfg.batch_size * cfg.grad_accum} preference pairs"

    def loss(self, model, batch, device):
        loss, figures, tokens = self.pair_loss(model, [self.train_rows[i] for i in batch], batch, "train", device)
        self.tally.add(**figures)
        return loss, tokens

    @torch.no_grad()
    def evaluate(self, model, device, autocast, dist=None):
        was_training = model.training
        model.eval()
        total = Tally()
        for start in range(0, len(self.val_rows), self.batch_size):
            index = list(range(start, min(start + self.batch_size, len(self.val_rows))))
            with autocast:
                loss, figures, _ = self.pair_loss(model, [self.val_rows[i] for i in index], index, "val", device)
            total.add(loss=loss.item(), **figures)  # (means of batch means: close enough for a report)
        model.train(was_training)
        means = total.take()
        return {"val_loss": means.pop("loss"), **{f"val_{k}": v for k, v in means.items()}}

    def step_metrics(self):
        return self.tally.take()

    def report(self, model, cfg):
        pass  # the last evaluation says it all


class RewardModel(PairObjective):
    """Bradley-Terry on (chosen, rejected): the score head learns which reply people (or a judge) prefer."""

    name = "reward"
    score_head = True

    def pair_loss(self, model, rows, index, split, device):
        replies = [(p + c) for p, c, _ in rows] + [(p + r) for p, _, r in rows]
        ids, last = padded_rows(replies, self.pad)
        scores = last_scores(model, ids.to(device), last.to(device))
        chosen, rejected = scores[:len(rows)], scores[len(rows):]
        margin = chosen - rejected
        loss = -F.logsigmoid(margin).mean()
        return loss, {"accuracy": (margin > 0).float().mean().item(), "margin": margin.mean().item()}, ids.numel()

    def eval_line(self, metrics):
        return (f"val loss {metrics['val_loss']:.4f}, pairwise accuracy {100 * metrics['val_accuracy']:.1f}%, "
                f"margin {metrics['val_margin']:.2f}")


class DPO(PairObjective):
    """Direct preference optimisation against reference log-probs computed once."""

    name = "dpo"

    def __init__(self, tokenizer, train_rows, val_rows, summary, cfg, reference):
        super().__init__(tokenizer, train_rows, val_rows, summary, cfg.batch_size, cfg.seed)
        self.beta, self.kind, self.vocab_limit = cfg.beta, cfg.dpo_loss, tokenizer.n_vocab
        self.ref = {"train": self.reference_logprobs(reference, train_rows), "val": self.reference_logprobs(reference, val_rows)}

    @torch.no_grad()
    def reference_logprobs(self, reference, rows):
        """(N, 2) log ref(chosen), log ref(rejected) of each pair."""
        out = []
        for start in range(0, len(rows), self.batch_size):
            out.append(self.logprobs(reference, rows[start:start + self.batch_size], next(reference.parameters()).device).cpu())
        return torch.cat(out) if out else torch.zeros(0, 2)

    def logprobs(self, model, rows, device):
        prompts = [p for p, _, _ in rows] * 2
        replies = [c for _, c, _ in rows] + [r for _, _, r in rows]
        logp = sequence_logprobs(model, reply_batch(prompts, replies, self.pad).to(device), self.vocab_limit)
        return torch.stack([logp[:len(rows)], logp[len(rows):]], dim=1)  # (B, 2)

    def pair_loss(self, model, rows, index, split, device):
        logp = self.logprobs(model, rows, device)
        ref = self.ref[split][index].to(device)
        rewards = self.beta * (logp.float() - ref)  # implicit rewards: beta log(pi / ref), (B, 2)
        h = (logp[:, 0] - ref[:, 0]) - (logp[:, 1] - ref[:, 1])
        loss = -F.logsigmoid(self.beta * h) if self.kind == "sigmoid" else (h - 1 / (2 * self.beta)) ** 2
        margin = rewards[:, 0] - rewards[:, 1]
        return loss.mean(), {"accuracy": (margin > 0).float().mean().item(), "margin": margin.mean().item()}, sum(
            len(p) + len(c) + len(r) for p, c, r in rows)

    def eval_line(self, metrics):
        return (f"val loss {metrics['val_loss']:.4f}, implicit-reward accuracy {100 * metrics['val_accuracy']:.1f}%, "
                f"margin {metrics['val_margin']:.3f}")


def reward_objective(cfg, tokenizer):
    train, held, summary = preference_pairs(cfg, tokenizer)
    return RewardModel(tokenizer, train, held, summary, cfg.batch_size, cfg.seed)


def dpo_objective(cfg, tokenizer, init, device):
    train, held, summary = preference_pairs(cfg, tokenizer)
    reference = frozen_model(cfg.ref_from or init["path"], tokenizer, device, "reference")
    objective = DPO(tokenizer, train, held, summary, cfg, reference)
    del reference  # the reference's log-probs are kept; the model is not
    return objective
