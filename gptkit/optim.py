"""The optimizers (AdamW, or Muon for the hidden matrices), the learning-rate schedule, and one optimizer step."""
import math

import torch

from gptkit.distributed import Distributed
from gptkit.muon import Muon


def make_optimizers(model, cfg, device):
    """AdamW for everything, or Muon for the 2-D matrices inside the blocks and AdamW for the rest."""
    matrices, others_decay, others_plain = [], [], []
    for name, p in model.named_parameters():
        if p.dim() == 2 and name.startswith("transformer.h."):
            matrices.append(p)
        elif p.dim() == 2:
            others_decay.append(p)
        else:
            others_plain.append(p)  # norms and biases: no decay
    fused = device.startswith("cuda")
    adam_groups = [{"params": others_decay, "weight_decay": cfg.weight_decay}, {"params": others_plain, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        adam_groups[0]["params"] = matrices + others_decay
        optimizers = [torch.optim.AdamW(adam_groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)]
    else:
        optimizers = [Muon(matrices, lr=cfg.muon_lr, weight_decay=cfg.weight_decay),
                      torch.optim.AdamW(adam_groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)]
    for opt in optimizers:
        for group in opt.param_groups:
            group["peak_lr"] = group["lr"]
    return optimizers


def lr_multiplier(step, cfg):
    """Linear warmup, then cosine or warmup-stable-decay down to min_lr_frac."""
    if step < cfg.warmup_iters:
        return (step + 1) / cfg.warmup_iters
    if cfg.lr_schedule == "cosine":
        progress = (step - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters)
        return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    decay_start = cfg.max_iters * (1 - cfg.decay_frac)
    if step < decay_start:
        return 1.0
    progress = (step - decay_start) / max(1, cfg.max_iters - decay_start)
    return 1.0 - (1 - cfg.min_lr_frac) * min(1.0, progress)


def train_step(train_model, model, optimizers, objective, batches, cfg, step, device, autocast, spikes, dist=Distributed()):
    """One optimizer step over grad_accum micro-batches; returns (loss, gradient norm, input tokens, why it was skipped or None).

    With W processes each data-parallel rank runs its share of the micro-batches (dist.micro_steps), gradients are averaged across them on the last one,
    and the loss and token count returned are the global ones, the same on every rank.
    A step whose loss or gradient is not finite, whose loss is a spike, or whose update would make a weight non-finite
    changes no weight and no optimizer state.
    """
    multiplier = lr_multiplier(step, cfg)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] * multiplier
    loss_sum, tokens = 0.0, 0
    micro_steps = dist.micro_steps(cfg.grad_accum)
    if dist.pipeline is not None:  # the schedule runs the micro-batches through the stages
        loss_sum, tokens = dist.pipeline_step(batches, micro_steps, device, autocast)
    for i in range(micro_steps if dist.pipeline is None else 0):
        batch = batches.next_batch()
        with dist.micro_step(train_model, i == micro_steps - 1):
            with autocast:
                loss, n = objective.loss(train_model, batch, device)
                loss = loss / micro_steps
            loss.backward()
        loss_sum += dist.full_value(loss.detach()).item()
        tokens += n
    if dist.active:
        loss_sum, tokens = dist.sum(loss_sum, tokens)
        loss_sum, tokens = loss_sum / dist.data_ranks, int(tokens)
    grad_norm = dist.clip_gradients(model, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    skipped = None
    if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
        skipped = f"a non-finite loss ({loss_sum:.4g}) or gradient norm ({grad_norm:.4g})"
    elif spikes.is_spike(loss_sum):
        skipped = f"a loss spike ({loss_sum:.4f}, recent mean {spikes.mean:.4f})"
    else:
        before = snapshot(model, optimizers)
        for opt in optimizers:
            opt.step()
        if dist.any(not weights_finite(model)):  # the update overflowed (a learning rate far too high)
            restore(model, optimizers, before)
            skipped = "an update that made weights non-finite"
        else:
            spikes.update(loss_sum)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return loss_sum, grad_norm, tokens, skipped


def snapshot(model, optimizers):
    """Copies of the weights and the optimizer states, to undo a step."""
    weights = [p.detach().clone() for p in model.parameters()]
    states = [{p: {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()} for p, state in opt.state.items()} for opt in optimizers]
    return weights, states


@torch.no_grad()
def restore(model, optimizers, saved):
    weights, states = saved
    for p, w in zip(model.parameters(), weights):
        p.copy_(w)
    for opt, state in zip(optimizers, states):
        opt.state.clear()
        opt.state.update(state)


def weights_finite(model):
    """Whether every weight of this process (its shards, under FSDP) is finite: one device sync."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    return bool(torch.stack([torch.isfinite(p).all() for p in local]).all())
