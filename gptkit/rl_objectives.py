"""Reinforcement learning on sampled replies: PPO (actor-critic, as InstructGPT) and GRPO, objectives of train.py's loop.

A round samples replies to a batch of prompts with the policy as it is (through gptkit.batching.BatchEngine, the
server's engine: a KV cache, every reply of the batch decoded together), scores them, and the loop then takes
--ppo_epochs optimizer steps on that batch with the clipped surrogate loss (ratio = pi / pi_at_sampling, clipped to
1 +- --clip). A reply that never ends loses --no_end_penalty.
- PPO: the reward model's score at the reply's end, minus kl_coef * (log pi - log ref) at every token (fixed, or
  adapted towards --target_kl); a critic (initialised from the reward model) estimates values; advantages by GAE
  (discount 1); the critic learns from the same batch, its value loss clipped around the values at sampling.
- GRPO: --group_size replies per prompt scored by a Python function (or a reward model); a reply's advantage is its
  reward's distance from its group's mean, in the group's standard deviations; no critic; optional KL to the
  reference in the loss; the loss averages over every reply token of the batch, so long replies weigh no more per token.
A batch's prompts, seeds and rollouts depend only on (--seed, round, micro-batch), and the rollouts being trained on
are saved with the checkpoint, so a resumed run continues bit for bit.
"""
import copy
import importlib
from functools import lru_cache

import numpy as np
import torch

from gptkit.batching import BatchEngine, Request
from gptkit.chat_template import messages_prompt, reply_stop_ids
from gptkit.errors import UsageError
from gptkit.logprobs import ReplyBatch, last_scores, masked_mean, padded_rows, reply_batch, token_logprobs
from gptkit.objective_base import Objective, Tally
from gptkit.preference_objectives import frozen_model, held_out_split, prompt_key
from gptkit.preferences import read_prompts


def unwrapped(model):
    """The plain GPT inside a DDP or torch.compile wrapper (generation runs on it, outside the wrappers)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def sample_replies(model, tokenizer, prompts, temperature, max_tokens, seeds, max_batch=16):
    """One reply per prompt, decoded together: (reply ids with the stop token that ended it, ended?) per prompt. A reply
    is never empty: it holds at least its first sampled token, or the stop token that was."""
    policy = unwrapped(model)
    was_training = policy.training
    policy.eval()
    engine = BatchEngine(policy, tokenizer, max_batch=min(max_batch, len(prompts)))
    stops = reply_stop_ids(tokenizer)
    requests = [Request(list(p), max_tokens, temperature=temperature, seed=s, stop_ids=stops, repetition_window=0)
                for p, s in zip(prompts, seeds)]
    pending = list(requests)
    try:
        while pending or engine.running:
            while pending and engine.free_rows:
                engine.admit(pending.pop(0))
            engine.step()
    finally:
        policy.train(was_training)
    return [(r.tokens + ([r.stop_id] if r.stop_id is not None else []), r.finish_reason == "stop") for r in requests]


def reply_text(tokenizer, ids):
    """A reply's text, without the token that ended it."""
    stops = reply_stop_ids(tokenizer)
    return tokenizer.decode([t for t in ids if t not in stops and t < tokenizer.n_vocab])


def reward_function(spec):
    """The Python function `module:function` names (called as function(reply_text, row_fields) -> float)."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise UsageError(f"--reward_fn={spec!r} must be module:function, e.g. gptkit.alignment_demo:judge")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except ImportError as e:
        raise UsageError(f"--reward_fn={spec!r}: cannot import {module_name} ({e}); is it on PYTHONPATH?") from None
    except AttributeError:
        raise UsageError(f"--reward_fn={spec!r}: {module_name} has no function {name!r}") from None
    if not callable(function):
        raise UsageError(f"--reward_fn={spec!r}: {name} is not a function")
    return function


@lru_cache(maxsize=4)
def epoch_order(seed, epoch, n):
    return np.random.default_rng([seed, epoch]).permutation(n)


class RolloutBatches:
    """The loop's micro-batches as (round, micro-batch) keys: micro-batch m of step s belongs to round s // ppo_epochs.
    Stateless but for a counter: the prompts of a key are a function of it (see RLObjective.prompts_of)."""

    def __init__(self, grad_accum, ppo_epochs):
        self.grad_accum, self.ppo_epochs, self.calls = grad_accum, ppo_epochs, 0

    def next_batch(self):
        step, micro = divmod(self.calls, self.grad_accum)
        self.calls += 1
        return step // self.ppo_epochs, micro

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


class RLObjective(Objective):
    """What PPO and GRPO share: prompts, rollouts kept per (round, micro-batch), the clipped policy loss, evaluation."""

    chat_tuned = True

    def __init__(self, tokenizer, train_rows, val_rows, summary, cfg, scorer, reference, dist):
        self.tokenizer, self.train_rows, self.val_rows, self.summary = tokenizer, train_rows, val_rows, summary
        self.cfg, self.scorer, self.reference, self.dist = cfg, scorer, reference, dist
        self.pad, self.vocab_limit = tokenizer.eot_id, tokenizer.n_vocab
        self.train_batches = RolloutBatches(cfg.grad_accum, cfg.ppo_epochs)
        self.rollouts = {}  # "round:micro" -> the tensors of that batch of rollouts
        self.tally = Tally()

    # -- prompts and rollouts --------------------------------------------------------------------------------------

    def prompts_of(self, round_, micro, n):
        """n training prompt indices for this key: consecutive places in a sequence of shuffled epochs."""
        start, total = (round_ * self.cfg.grad_accum + micro) * n, len(self.train_rows)
        return [int(epoch_order(self.cfg.seed, position // total, total)[position % total]) for position in range(start, start + n)]

    def seeds(self, round_, micro, n):
        return [hash((self.cfg.seed, round_, micro, i)) % 2**62 for i in range(n)]  # ints hash the same in every process

    def batch_for(self, model, key, device):
        name = f"{key[0]}:{key[1]}"
        if name not in self.rollouts:
            self.rollouts = {k: v for k, v in self.rollouts.items() if k.split(":")[0] == str(key[0])}  # older rounds are done
            # every rank keeps every rank's rollouts, so the checkpoint rank 0 writes resumes them all
            self.rollouts.update(self.dist.gather((name, self.rollout(model, *key, device))))
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.rollouts[name].items()}

    def sampled(self, model, prompt_indices, seeds, device):
        """Replies to these training prompts: the ReplyBatch, log-probs at sampling (B, T), rewards (B,), ended (B,)."""
        rows = [self.train_rows[i] for i in prompt_indices]
        prompts = [ids for ids, _, _ in rows]
        replies = sample_replies(model, self.tokenizer, prompts, self.cfg.rollout_temperature, self.cfg.max_reply_tokens, seeds)
        ended = torch.tensor([e for _, e in replies])
        reply_ids = [r for r, _ in replies]
        batch = reply_batch(prompts, reply_ids, self.pad).to(device)
        with torch.no_grad():
            old_logp = token_logprobs(unwrapped(model), batch, self.vocab_limit)
        rewards = self.score(prompts, reply_ids, [f for _, f, _ in rows], device)
        rewards = rewards - self.cfg.no_end_penalty * (~ended).float().to(device)
        return batch, old_logp, rewards, ended

    @torch.no_grad()
    def score(self, prompts, reply_ids, fields, device):
        """The reward of each reply to its prompt (B,): the reward function on its text, or the reward model's score."""
        if not isinstance(self.scorer, torch.nn.Module):  # a reward function
            texts = [reply_text(self.tokenizer, r) for r in reply_ids]
            return torch.tensor([float(self.scorer(text, f)) for text, f in zip(texts, fields)], device=device)
        ids, last = padded_rows([p + r for p, r in zip(prompts, reply_ids)], self.pad)
        return last_scores(self.scorer, ids.to(device), last.to(device))

    def reference_logprobs(self, batch):
        with torch.no_grad():
            return token_logprobs(self.reference, batch, self.vocab_limit)

    # -- the loss ----------------------------------------------------------------------------------------------------

    def loss(self, model, key, device):
        data = self.batch_for(model, key, device)
        batch = ReplyBatch(data["inputs"], data["targets"])
        mask = batch.reply_mask
        logp, entropy = token_logprobs(model, batch, self.vocab_limit, entropy=True)
        ratio = torch.exp(logp - data["old_logp"])
        advantages = data["advantages"]
        surrogate = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - self.cfg.clip, 1 + self.cfg.clip))
        loss = masked_mean(surrogate + self.kl_term(logp, data), mask)
        self.tally.add(clipfrac=masked_mean(((ratio - 1).abs() > self.cfg.clip).float(), mask).item(),
                       entropy=masked_mean(entropy, mask).item(), **data["figures"])
        return loss, int(mask.sum())

    def kl_term(self, logp, data):
        return 0.0

    def step_metrics(self):
        return self.tally.take()

    # -- evaluation --------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model, device, autocast, dist=None):
        """Greedy replies to held-out prompts: their mean reward (val_loss is its negative), how many ended, and the
        KL to the reference of replies sampled at temperature 1 (nats per reply)."""
        prompts = [ids for ids, _, _ in self.val_rows[:self.cfg.eval_prompts]]
        fields = [f for _, f, _ in self.val_rows[:self.cfg.eval_prompts]]
        greedy = sample_replies(model, self.tokenizer, prompts, 0.0, self.cfg.max_reply_tokens, [0] * len(prompts))
        rewards = self.score(prompts, [r for r, _ in greedy], fields, device)
        metrics = {"val_loss": -rewards.mean().item(), "val_reward": rewards.mean().item(),
                   "val_ended": float(np.mean([e for _, e in greedy]))}
        if self.reference is not None:
            metrics["val_kl"] = kl_to_reference(model, self.reference, self.tokenizer, prompts, self.cfg.max_reply_tokens, device)
        return metrics

    def eval_line(self, metrics):
        kl = f", KL to the reference {metrics['val_kl']:.3f} nats/reply" if "val_kl" in metrics else ""
        return f"val reward {metrics['val_reward']:.4f} (greedy, {100 * metrics['val_ended']:.0f}% ended){kl}"

    def report(self, model, cfg):
        """A few held-out prompts and the greedy replies to them."""
        rows = self.val_rows[:3]
        replies = sample_replies(model, self.tokenizer, [ids for ids, _, _ in rows], 0.0, cfg.max_reply_tokens, [0] * len(rows))
        for (_, _, user), (reply, _) in zip(rows, replies):
            print(f"  user: {user!r} -> {reply_text(self.tokenizer, reply)!r}")

    # -- state ---------------------------------------------------------------------------------------------------------

    def state_dict(self):
        return {"name": self.name, "rollouts": self.rollouts}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.rollouts = state["rollouts"]


@torch.no_grad()
def kl_to_reference(model, reference, tokenizer, prompts, max_tokens, device, seed=0):
    """Monte-Carlo KL(pi || ref) in nats per reply: replies sampled from pi at temperature 1, sum of log pi - log ref."""
    replies = sample_replies(model, tokenizer, prompts, 1.0, max_tokens, [seed + i for i in range(len(prompts))])
    batch = reply_batch(prompts, [r for r, _ in replies], tokenizer.eot_id).to(device)
    policy = unwrapped(model)
    return (token_logprobs(policy, batch, tokenizer.n_vocab) - token_logprobs(reference, batch, tokenizer.n_vocab)).sum(1).mean().item()


class PPO(RLObjective):
    """Actor-critic against a learned reward model, with a KL penalty to the reference in the reward."""

    name = "ppo"

    def __init__(self, tokenizer, train_rows, val_rows, summary, cfg, reward_model, reference, critic, dist):
        super().__init__(tokenizer, train_rows, val_rows, summary, cfg, reward_model, reference, dist)
        self.critic = critic.requires_grad_(True).train()
        self.critic_opt = torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, weight_decay=0.0)
        self.kl_coef = cfg.kl_coef

    def describe_batch(self, cfg):
        return f"{cfg.batch_size * cfg.grad_accum} replies sampled every {cfg.ppo_epochs} steps"

    def rollout(self, model, round_, micro, device):
        if round_ == 0 and micro == 0:
            for warm in range(self.cfg.critic_warmup):  # the critic learns first, on rollouts the policy does not train on
                self.ppo_batch(model, -1 - warm, micro, device)
        return self.ppo_batch(model, round_, micro, device)

    def ppo_batch(self, model, round_, micro, device):
        n = self.cfg.batch_size
        batch, old_logp, scores, ended = self.sampled(model, self.prompts_of(max(round_, 0), micro, n), self.seeds(round_, micro, n), device)
        mask = batch.reply_mask
        kl = (old_logp - self.reference_logprobs(batch)) * mask  # (B, T), per token
        rewards = -self.kl_coef * kl
        last = mask.cumsum(1).argmax(1)  # each row's last reply position
        rewards[torch.arange(len(last)), last] += scores
        with torch.no_grad():
            values = self.critic(batch.inputs, scores=True).float() * mask
        advantages = gae(rewards, values, mask, self.cfg.gae_lambda)
        returns = advantages + values
        value_loss = self.train_critic(batch, values, returns, mask)
        kl_per_reply = self.dist.sum(kl.sum(1).mean().item())[0] / self.dist.data_ranks  # the same on every rank
        if self.cfg.target_kl:  # proportional controller (Ziegler et al. 2019): move kl_coef by at most 10% per round
            self.kl_coef *= 1 + 0.1 * max(-1.0, min(1.0, kl_per_reply / self.cfg.target_kl - 1))
        advantages = whiten(advantages, mask)
        figures = {"reward": scores.mean().item(), "kl": kl_per_reply, "kl_coef": self.kl_coef, "value_loss": value_loss,
                   "reply_tokens": mask.sum(1).float().mean().item(), "ended": ended.float().mean().item()}
        return {"inputs": batch.inputs.cpu(), "targets": batch.targets.cpu(), "old_logp": old_logp.cpu(), "advantages": advantages.cpu(),
                "figures": figures}

    def train_critic(self, batch, old_values, returns, mask):
        """--ppo_epochs steps of the clipped value loss on this batch; the mean loss of the last."""
        for _ in range(self.cfg.ppo_epochs):
            values = self.critic(batch.inputs, scores=True).float()
            clipped = old_values + (values - old_values).clamp(-self.cfg.clip, self.cfg.clip)
            loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)
            self.critic_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.dist.average_gradients(self.critic)  # every rank's critic takes the same step
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), 1.0)
            self.critic_opt.step()
        return loss.item()

    def state_dict(self):
        return {**super().state_dict(), "critic": self.critic.state_dict(), "critic_opt": self.critic_opt.state_dict(), "kl_coef": self.kl_coef}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.critic.load_state_dict(state["critic"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.kl_coef = state["kl_coef"]


def gae(rewards, values, mask, lam):
    """Generalised advantage estimates (B, T) with discount 1: the value after a reply's last token is 0."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.size(0), device=rewards.device)
    next_value = torch.zeros_like(running)
    for t in reversed(range(rewards.size(1))):
        m = mask[:, t].float()
        delta = rewards[:, t] + next_value - values[:, t]
        running = (delta + lam * running) * m
        advantages[:, t] = running
        next_value = torch.where(mask[:, t], values[:, t], next_value)
    return advantages


def whiten(values, mask):
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + 1e-8) * mask


class GRPO(RLObjective):
    """Group-relative advantages: --group_size replies per prompt, each compared with its own group."""

    name = "grpo"

    def describe_batch(self, cfg):
        return (f"{cfg.batch_size * cfg.grad_accum // cfg.group_size} prompts x {cfg.group_size} replies sampled every "
                f"{cfg.ppo_epochs} steps")

    def rollout(self, model, round_, micro, device):
        g = self.cfg.group_size
        n = self.cfg.batch_size // g
        prompts = [i for i in self.prompts_of(round_, micro, n) for _ in range(g)]
        batch, old_logp, rewards, ended = self.sampled(model, prompts, self.seeds(round_, micro, n * g), device)
        advantages = group_advantages(rewards, g)[:, None] * batch.reply_mask
        data = {"inputs": batch.inputs.cpu(), "targets": batch.targets.cpu(), "old_logp": old_logp.cpu(), "advantages": advantages.cpu()}
        if self.cfg.kl_coef:
            data["ref_logp"] = self.reference_logprobs(batch).cpu()
        data["figures"] = {"reward": rewards.mean().item(), "reply_tokens": batch.reply_mask.sum(1).float().mean().item(),
                           "ended": ended.float().mean().item()}
        return data

    def kl_term(self, logp, data):
        """kl_coef times the k3 estimate of KL(pi || ref) per token (Schulman): non-negative, its gradient 0 where pi = ref."""
        if "ref_logp" not in data:
            return 0.0
        diff = data["ref_logp"] - logp
        return self.cfg.kl_coef * (torch.exp(diff) - diff - 1)


def group_advantages(rewards, group_size):
    """(reward - its group's mean) / (the group's std + 1e-4): 0 for every reply of a group whose rewards are all equal."""
    groups = rewards.view(-1, group_size)
    return ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).view(-1)


# -- building them ----------------------------------------------------------------------------------------------------

def rl_prompts(cfg, tokenizer):
    """(train rows, held-out rows, summary): rows are (prompt ids, fields for the reward, the user's last message), held out by prompt."""
    if not cfg.prompts:
        raise UsageError(f"--objective={cfg.objective} samples replies to prompts: give --prompts=FILE.jsonl")
    rows, bad = read_prompts(cfg.prompts)
    if bad:
        print(f"note: {len(bad)} prompt rows skipped: {'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    fitted = [(messages_prompt(tokenizer, r.prompt), r.fields, r.prompt[-1]["content"], prompt_key(r.prompt)) for r in rows]
    fitted = [f for f in fitted if len(f[0]) + cfg.max_reply_tokens <= cfg.block_size]
    if len(fitted) < len(rows):
        print(f"note: {len(rows) - len(fitted)} prompts left out: with --max_reply_tokens={cfg.max_reply_tokens} they do not fit --block_size={cfg.block_size}")
    if not fitted:
        raise UsageError(f"{cfg.prompts}: no prompt fits --block_size={cfg.block_size} with --max_reply_tokens={cfg.max_reply_tokens}")
    train, held = held_out_split([f[3] for f in fitted], cfg.val_fraction, cfg.seed)
    return [fitted[i][:3] for i in train], [fitted[i][:3] for i in held], f"{cfg.prompts} ({len(train):,} prompts to train on, {len(held):,} held out)"


def ppo_objective(cfg, tokenizer, init, device, dist):
    if not cfg.reward_model:
        raise UsageError("--objective=ppo optimises against a learned reward: give --reward_model=CHECKPOINT (train one with --objective=reward)")
    train, held, summary = rl_prompts(cfg, tokenizer)
    reward_model = frozen_model(cfg.reward_model, tokenizer, device, "reward model")
    critic = copy.deepcopy(reward_model)  # starts as the reward model, then learns values
    reference = frozen_model(cfg.ref_from or init["path"], tokenizer, device, "reference")
    return PPO(tokenizer, train, held, summary, cfg, reward_model, reference, critic, dist)


def grpo_objective(cfg, tokenizer, init, device, dist):
    if bool(cfg.reward_fn) == bool(cfg.reward_model):
        raise UsageError("--objective=grpo scores replies with --reward_fn=module:function or --reward_model=CHECKPOINT: give exactly one")
    if cfg.group_size < 2:
        raise UsageError(f"--group_size={cfg.group_size}: GRPO compares replies within a group; use at least 2")
    if cfg.batch_size % cfg.group_size:
        raise UsageError(f"--batch_size={cfg.batch_size} (replies per micro-batch) must be a multiple of --group_size={cfg.group_size}")
    train, held, summary = rl_prompts(cfg, tokenizer)
    scorer = reward_function(cfg.reward_fn) if cfg.reward_fn else frozen_model(cfg.reward_model, tokenizer, device, "reward model")
    reference = frozen_model(cfg.ref_from or init["path"], tokenizer, device, "reference")  # for the KL (loss, or reported)
    return GRPO(tokenizer, train, held, summary, cfg, scorer, reference, dist)

