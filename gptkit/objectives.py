"""Training objectives: what a run optimises, as a small object the one loop in train.py is given.

An objective owns its data and answers four questions the loop asks:
- `train_batches`: where batches come from (next_batch(), state_dict(), load_state_dict(): the data position resumes);
- `loss(model, batch, device)`: the mean loss to minimise on one micro-batch, and the input tokens it used;
- `evaluate(model, device, autocast, dist)`: validation metrics, at least val_loss (lower is better) and val_bpb;
- `report(model, cfg)`: what to print when training ends.
It saves anything else it needs through state_dict()/load_state_dict(), may add figures to each logged step
(`step_metrics`), and says how to print its evaluation (`eval_line`).

Here: next-token pretraining on prepared token shards, and supervised fine-tuning on conversations (the loss on the
assistant's tokens only). Alignment from feedback (reward models, DPO, PPO, GRPO) lives in gptkit/preference_objectives.py
and gptkit/rl_objectives.py; make_objective at the end picks one.
"""
import json
from pathlib import Path

import numpy as np
import torch

from gptkit.chat_session import reply_accuracy
from gptkit.chat_template import conversation_rows, dataset_conversations, read_conversations
from gptkit.distributed import Distributed
from gptkit.engine import TextStream, generate
from gptkit.errors import UsageError
from gptkit.evaluation import evaluate
from gptkit.loader import ConversationBatches, RandomWindows, conversation_batches, sequential_windows
from gptkit.objective_base import Objective
from gptkit.preference_objectives import dpo_objective, reward_objective
from gptkit.preparation import PrepareConfig, default_data_dir, prepare
from gptkit.rl_objectives import grpo_objective, ppo_objective
from gptkit.shards import TOKENIZER_FILE, is_prepared, load_split, read_meta
from gptkit.tokenizer import Tokenizer

# -- next-token pretraining -----------------------------------------------------------------------------------------------

class NextToken(Objective):
    """Predict every next token of random windows of a prepared corpus."""

    name = "next_token"
    loss_units = "nats per token"  # the training loss and val_loss alike (ChatSFT's: over the assistant's tokens)

    def __init__(self, tokenizer, train_batches, val_batches, summary):
        self.tokenizer, self.train_batches, self.val_batches, self.summary = tokenizer, train_batches, val_batches, summary
        self._byte_lengths = None

    def describe_batch(self, cfg):
        return f"{cfg.batch_size * cfg.grad_accum} x {cfg.block_size} tokens"

    def loss(self, model, batch, device):
        """Mean cross-entropy over the targets (a target of -1 is not scored), and the input tokens."""
        x, y = (torch.from_numpy(a).to(device, non_blocking=True) for a in batch)
        return model(x, y), x.numel()

    def evaluate(self, model, device, autocast, dist=Distributed()):
        if self._byte_lengths is None:
            self._byte_lengths = torch.tensor(self.tokenizer.token_byte_lengths(), device=device)
        return evaluate(model, dist.eval_batches(self.val_batches()), self._byte_lengths, device, autocast, dist)

    def report(self, model, cfg):
        if cfg.sample_tokens:
            print_sample(model, self.tokenizer, cfg)


def pretraining_objective(cfg, dist=Distributed()):
    data_dir = prepared_data(cfg, dist)
    meta = read_meta(data_dir)
    kind = meta.get("tokenizer", "its own")
    if kind != cfg.tokenizer:
        print(f"note: {data_dir} was prepared with the {kind} tokenizer, which this run uses (--tokenizer applies when preparing)")
    tokenizer = Tokenizer.from_json((data_dir / TOKENIZER_FILE).read_text())
    val_arrays = load_split(data_dir, "val")
    return NextToken(tokenizer, RandomWindows(load_split(data_dir, "train"), cfg.batch_size, cfg.block_size, cfg.seed),
                     lambda: sequential_windows(val_arrays, cfg.batch_size, cfg.block_size, cfg.eval_tokens),
                     f"{data_dir} ({meta['splits']['train']['tokens']:,} train tokens, {kind} tokenizer, {tokenizer.n_vocab} ids)")


def prepared_data(cfg, dist=Distributed()):
    """The prepared data folder for this run, preparing the corpus first when needed (rank 0 only; the others wait)."""
    prep = PrepareConfig(inputs=[cfg.data_path] if cfg.data_path else [], dataset=cfg.dataset, text_field=cfg.text_field,
                         tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size, val_fraction=cfg.val_fraction)
    prep.out_dir = cfg.data_dir or str(default_data_dir(prep))
    dist.wait_for(lambda: is_prepared(prep.out_dir))
    if not is_prepared(prep.out_dir):
        print(f"preparing data into {prep.out_dir} (once; later runs reuse it)", flush=True)
        prepare(prep)
    return Path(prep.out_dir)


def print_sample(model, tokenizer, cfg):
    prompt = tokenizer.encode(cfg.sample_prompt) if cfg.sample_prompt else [tokenizer.eot_id]
    stream = TextStream(tokenizer)
    print("-" * 20, "sample", "-" * 20)
    print(cfg.sample_prompt, end="")
    for token in generate(model, prompt, cfg.sample_tokens, temperature=0.8, top_k=50, seed=cfg.seed,
                          stop_ids={tokenizer.eot_id}, vocab_limit=tokenizer.n_vocab):
        print(stream.feed(token), end="", flush=True)
    print(stream.flush())
    print("-" * 48)


# -- supervised fine-tuning on conversations ------------------------------------------------------------------------------

class ChatSFT(NextToken):
    """Next-token loss on the assistant's replies only: the other tokens and the padding have targets of -1."""

    name = "chat_sft"
    chat_tuned = True

    def __init__(self, tokenizer, train_batches, val_batches, summary, held_out):
        super().__init__(tokenizer, train_batches, val_batches, summary)
        self.held_out = held_out  # validation conversations, never trained on, for --eval_chat

    def describe_batch(self, cfg):
        return f"{cfg.batch_size * cfg.grad_accum} conversations"

    def report(self, model, cfg):
        if cfg.eval_chat:
            print_chat_accuracy(model, self.tokenizer, self.held_out[:cfg.eval_chat])
        else:
            super().report(model, cfg)


def chat_objective(cfg, tokenizer):
    """Conversations rendered with the chat template; a random --val_fraction of them is held out."""
    if cfg.chat_dataset:
        conversations, source = dataset_conversations(cfg.chat_dataset, cfg.chat_split), f"dataset {cfg.chat_dataset}"
    elif cfg.chat_data == "demo":
        from gptkit.demo_chat import training_conversations
        conversations, source = training_conversations(cfg.demo_conversations, cfg.seed, tokenizer), "synthetic demo conversations"
    else:
        conversations, source = read_conversations(cfg.chat_data), cfg.chat_data
    n_held_out = max(1, round(cfg.val_fraction * len(conversations)))
    if cfg.val_fraction <= 0 or len(conversations) < 2:
        raise UsageError(f"{source}: fine-tuning holds out conversations for validation; use at least 2 and --val_fraction > 0")
    held = set(np.random.default_rng(cfg.seed).permutation(len(conversations))[:n_held_out].tolist())  # random: no pattern of the source
    train_set = [c for i, c in enumerate(conversations) if i not in held]
    seen = {json.dumps(c["messages"]) for c in train_set}
    held_out = [conversations[i] for i in sorted(held) if json.dumps(conversations[i]["messages"]) not in seen]  # never trained on
    train_rows, truncated, dropped = conversation_rows(tokenizer, train_set, cfg.block_size + 1)
    val_rows, _, _ = conversation_rows(tokenizer, held_out, cfg.block_size + 1)
    if truncated or dropped:
        print(f"note: {truncated} conversations were cut to --block_size={cfg.block_size} on a turn boundary and {dropped} dropped "
              f"(not even their first reply fits); raise --block_size to keep them")
    if not val_rows:
        raise UsageError(f"{source}: no held-out conversation (one not also in the training set) fits --block_size={cfg.block_size}; "
                         "raise it or --val_fraction")
    val_rows = val_rows[:max(1, cfg.eval_tokens // cfg.block_size)] if cfg.eval_tokens else val_rows
    pad = tokenizer.eot_id
    return ChatSFT(tokenizer, ConversationBatches(train_rows, cfg.batch_size, cfg.seed, pad),
                   lambda: conversation_batches(val_rows, cfg.batch_size, pad),
                   f"{source} ({len(train_rows):,} conversations to train on, {len(held_out):,} held out)", held_out)


def print_chat_accuracy(model, tokenizer, conversations):
    """Reply to held-out conversations through the REPL's own ChatSession and print the exact-match accuracy."""
    counts, examples = reply_accuracy(model.eval(), tokenizer, conversations)
    if "all" not in counts:
        return
    kinds = ", ".join(f"{kind} {100 * right / total:.0f}% ({right}/{total})" for kind, (right, total) in counts.items() if kind != "all")
    right, total = counts["all"]
    print(f"chat accuracy on {total} held-out conversations: {100 * right / total:.1f}% ({right}/{total}){f'; {kinds}' if kinds else ''}")
    for question, expected, got in examples[:4]:
        print(f"  user: {question!r}  expected: {expected!r}  got: {got!r}")


# -- choosing one ---------------------------------------------------------------------------------------------------------

ALIGNMENT = ("reward", "dpo", "ppo", "grpo")


def make_objective(cfg, init, dist=Distributed(), device="cpu"):
    """The objective --objective names; auto: fine-tuning on conversations when given some, else pretraining."""
    kind = cfg.objective
    if kind == "auto":
        kind = "chat_sft" if cfg.chat_data or cfg.chat_dataset else "next_token"
    if kind in ALIGNMENT:
        return alignment_objective(cfg, kind, init, dist, device)
    if init is not None and init["model_config"].get("score_head"):
        raise UsageError(f"{init['path']} is a reward model; --objective={kind} trains a model that writes text: start from a policy checkpoint")
    if kind == "chat_sft":
        if not (cfg.chat_data or cfg.chat_dataset):
            raise UsageError("--objective=chat_sft fine-tunes on conversations: give --chat_data=FILE.jsonl (or demo) or --chat_dataset=NAME")
        if init is None:
            raise UsageError("fine-tuning on conversations needs --init_from=CHECKPOINT, the model to fine-tune "
                             "(e.g. --init_from=out after `python train.py`)")
        return chat_objective(cfg, Tokenizer.from_json(init["tokenizer"]))
    objective = pretraining_objective(cfg, dist)
    if init is not None and init["tokenizer"] != objective.tokenizer.to_json():
        raise UsageError(f"{init['path']} was trained with a different tokenizer than {objective.summary.split(' ')[0]}'s; "
                         "prepare the data with the checkpoint's tokenizer, or train from scratch")
    return objective


def alignment_objective(cfg, kind, init, dist, device):
    """A reward model, DPO, PPO or GRPO."""
    if init is None:
        raise UsageError(f"--objective={kind} starts from a fine-tuned model: give --init_from=CHECKPOINT (e.g. a chat_sft run's out_dir)")
    if init["model_config"].get("score_head") and kind != "reward":
        raise UsageError(f"{init['path']} is a reward model, and --objective={kind} trains a policy: --init_from takes the fine-tuned "
                         "policy (the reward model goes to --reward_model)")
    if kind in ("ppo", "grpo") and dist.mode == "fsdp":
        raise UsageError(f"--objective={kind} samples replies with the whole model on every process: use --parallel=ddp, not fsdp")
    tokenizer = Tokenizer.from_json(init["tokenizer"])
    if kind == "reward":
        return reward_objective(cfg, tokenizer)
    if kind == "dpo":
        return dpo_objective(cfg, tokenizer, init, device)
    return (ppo_objective if kind == "ppo" else grpo_objective)(cfg, tokenizer, init, device, dist)
