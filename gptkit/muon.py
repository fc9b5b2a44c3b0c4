"""Muon (Keller Jordan's MomentUm Orthogonalized by Newton-schulz) for the hidden matrices: torch.optim.Muon, with the
orthogonalisation in float32 on a CPU.

torch runs its Newton-Schulz iteration in bfloat16, which a CPU without bfloat16 matrix instructions multiplies about
25x slower than float32: on a 2-core AMD EPYC that made one Muon step of the default 4 x 256 model take 12 s, against
under 0.1 s in float32. On a GPU the step is torch's own. Same hyperparameters, same state (`momentum_buffer`), so
checkpoints move between the two.
"""
import torch


def orthogonalize(update, coefficients, steps, eps, dtype):
    """The quintic Newton-Schulz iteration of torch.optim.Muon (and Keller Jordan's reference), computed in `dtype`."""
    a, b, c = coefficients
    x = update.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Muon):
    @torch.no_grad()
    def step(self, closure=None):
        if any(p.device.type != "cpu" for group in self.param_groups for p in group["params"]):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"], torch.float32)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-adjusted_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


def adjusted_lr(lr, rule, shape):
    """torch.optim.Muon's scaling of the learning rate by the matrix's shape."""
    rows, cols = shape[:2]
    if rule is None or rule == "original":
        return lr * max(1, rows / cols) ** 0.5
    if rule == "match_rms_adamw":
        return lr * 0.2 * max(rows, cols) ** 0.5
    return lr
