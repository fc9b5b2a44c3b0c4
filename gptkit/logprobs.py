"""Prompt-and-reply batches and the log-probabilities of the replies: what every alignment objective scores.

A row is a prompt's token ids followed by a reply's; only the reply's tokens are scored. Rows are built here from
unpadded token lists and padded on the right only, so every row starts at position 0, its tokens sit where they would
alone, and padding (after them: attention is causal) never changes what they see or score.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ReplyBatch:
    """Rows of prompt + reply tokens, right-padded. inputs/targets are the rows shifted by one, as for next-token loss;
    targets are -1 except on reply tokens, so a position scores a reply token exactly when its target is >= 0."""
    inputs: torch.Tensor  # (B, T) long
    targets: torch.Tensor  # (B, T) long, -1 off the replies

    @property
    def reply_mask(self):
        return self.targets >= 0

    def to(self, device):
        return ReplyBatch(self.inputs.to(device), self.targets.to(device))


def reply_batch(prompts, replies, pad_id):
    """A ReplyBatch of rows prompts[i] + replies[i] (lists of token ids; every reply at least one token)."""
    rows = [list(p) + list(r) for p, r in zip(prompts, replies)]
    T = max(len(row) for row in rows) - 1
    inputs = torch.full((len(rows), T), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), T), -1, dtype=torch.long)
    for i, (prompt, row) in enumerate(zip(prompts, rows)):
        inputs[i, :len(row) - 1] = torch.tensor(row[:-1])
        start = len(prompt) - 1  # the input position that predicts the reply's first token
        targets[i, start:len(row) - 1] = torch.tensor(row[len(prompt):])
    return ReplyBatch(inputs, targets)


def padded_rows(rows, pad_id):
    """Whole rows right-padded (B, T), and the index of each row's last token (B,): where a reward model reads its score."""
    ids = torch.full((len(rows), max(len(row) for row in rows)), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    return ids, torch.tensor([len(row) - 1 for row in rows])


def last_scores(model, ids, last):
    """The score head's value at each row's last token (B,)."""
    return model(ids, scores=True).float().gather(1, last[:, None]).squeeze(1)


def token_logprobs(model, batch, vocab_limit=None, entropy=False):
    """Log-probability of each target token (B, T), 0 off the replies; with entropy=True also each position's entropy (B, T).

    Ids at or past vocab_limit (a padded output layer) are left out of the softmax, as generation leaves them out."""
    logits = model(batch.inputs).float()
    if vocab_limit is not None and vocab_limit < logits.size(-1):
        logits = logits[..., :vocab_limit]
    logp_all = F.log_softmax(logits, dim=-1)
    mask = batch.reply_mask
    logp = logp_all.gather(-1, batch.targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    if not entropy:
        return logp
    return logp, -(logp_all.exp() * logp_all).sum(-1) * mask


def sequence_logprobs(model, batch, vocab_limit=None):
    """The log-probability of each row's whole reply (B,): the sum over its tokens."""
    return token_logprobs(model, batch, vocab_limit).sum(dim=1)


def masked_mean(values, mask):
    """Mean of values over the positions where mask is true: every token weighs the same, whatever its row's length."""
    return (values * mask).sum() / mask.sum().clamp(min=1)
