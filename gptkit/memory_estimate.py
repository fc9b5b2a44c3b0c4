"""The memory a training run needs per device, estimated before it starts (train.py prints it): weights, gradients,
optimizer state, and the activations a micro-batch keeps for its backward pass, for the layout in use (one process,
DDP, FSDP's shards, tensor parallelism's split matrices).

The activations are measured, not guessed from a formula: the model runs forward on PyTorch's meta device (shapes
only: no memory, no compute) and the tensors autograd saves for the backward pass are summed. Within 10% of the same
sum on real tensors (tests/test_memory_estimate.py). Temporaries of the backward pass come on top.
"""
import torch

from gptkit.model import GPT
from gptkit.tensor_parallel import local_model

ADAM_STATES, MUON_STATES = 2, 1  # float32 tensors per parameter: AdamW's two moments, Muon's momentum


def saved_bytes(config, rows, device="meta", tp=1):
    """Bytes autograd keeps from a forward of `rows` sequences of block_size tokens (with targets), weights excluded;
    on the meta device by default (shapes only), or on a real one (what the tests compare it with); with tp, of the
    share one tensor-parallel rank computes."""
    with torch.device(device):
        model = GPT(config)
        if tp > 1:
            local_model(model, tp)
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage._cdata not in weights:
            kept[storage._cdata] = storage.nbytes()  # views of one tensor counted once
        return tensor

    ids = torch.zeros(rows, config.block_size, dtype=torch.long, device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(ids, ids)
    return sum(kept.values())


def activation_bytes(config, rows, checkpointing=False, tp=1):
    """What a micro-batch of `rows` sequences keeps for the backward pass. With activation checkpointing: each block's
    input, plus one block's own activations while it is recomputed."""
    if not checkpointing:
        return saved_bytes(config, rows, tp=tp)
    one, two = (saved_bytes(_with_layers(config, n), rows, tp=tp) for n in (1, 2))
    per_block, outside = two - one, 2 * one - two
    block_input = rows * config.block_size * config.n_embd * 4
    return outside + config.n_layer * block_input + per_block


def _with_layers(config, n_layer):
    return type(config)(**{**vars(config), "n_layer": n_layer, "attn_pattern": config.attn_pattern[:n_layer]})


def estimate(model, optimizers, config, checkpointing, rows, tp=1, in_flight=1):
    """{part: bytes} on this device, of `model` as split here (by FSDP, tensor parallelism: each parameter's local
    share counts; pipeline stages: the blocks held); `rows` the sequences of a micro-batch on this device, `tp` the
    tensor-parallel ranks, `in_flight` the micro-batches whose activations a pipeline schedule keeps at once. The
    optimizer state counts what each of `optimizers` keeps per parameter it holds."""
    def local_bytes(p, per_element=None):
        local = p.to_local() if hasattr(p, "to_local") else p
        return local.numel() * (per_element or local.element_size())

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer_bytes = sum((MUON_STATES if isinstance(opt, torch.optim.Muon) else ADAM_STATES) * local_bytes(p, 4)
                          for opt in optimizers for group in opt.param_groups for p in group["params"])
    return {"weights": sum(local_bytes(p) for p in model.parameters()),
            "gradients": sum(local_bytes(p) for p in params),
            "optimizer": optimizer_bytes,
            "activations": in_flight * activation_bytes(_with_layers(config, len(model.transformer.h)), rows, checkpointing, tp)}


def describe(parts, rows, block_size, in_flight=1):
    def size(n):
        return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"

    listed = ", ".join(f"{name} {size(n)}" for name, n in parts.items())
    batches = f"a micro-batch of {rows} x {block_size} tokens" if in_flight == 1 else f"{in_flight} micro-batches of {rows} x {block_size} tokens in flight"
    return f"memory per device (estimate): {listed} ({batches}): {size(sum(parts.values()))}"
