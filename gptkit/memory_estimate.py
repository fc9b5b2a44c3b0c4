"""The memory a training run needs per device, estimated before it starts (train.py prints it): weights, gradients,
optimizer state, and the activations a micro-batch keeps for its backward pass, for the layout in use (one process,
DDP, or FSDP's 1/W shards).

The activations are measured, not guessed from a formula: the model runs forward on PyTorch's meta device (shapes
only: no memory, no compute) and the tensors autograd saves for the backward pass are summed. Within 10% of the same
sum on real tensors (tests/test_memory_estimate.py). Temporaries of the backward pass come on top.
"""
import torch

from gptkit.model import GPT

ADAM_STATES, MUON_STATES = 2, 1  # float32 tensors per parameter: AdamW's two moments, Muon's momentum


def saved_bytes(config, rows):
    """Bytes autograd keeps from a forward of `rows` sequences of block_size tokens (with targets), weights excluded."""
    with torch.device("meta"):
        model = GPT(config)
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage._cdata not in weights:
            kept[storage._cdata] = storage.nbytes()  # views of one tensor counted once
        return tensor

    ids = torch.zeros(rows, config.block_size, dtype=torch.long, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(ids, ids)
    return sum(kept.values())


def activation_bytes(config, rows, checkpointing=False):
    """What a micro-batch of `rows` sequences keeps for the backward pass. With activation checkpointing: each block's
    input, plus one block's own activations while it is recomputed."""
    if not checkpointing:
        return saved_bytes(config, rows)
    one, two = (saved_bytes(_with_layers(config, n), rows) for n in (1, 2))
    per_block, outside = two - one, 2 * one - two
    block_input = rows * config.block_size * config.n_embd * 4
    return outside + config.n_layer * block_input + per_block


def _with_layers(config, n_layer):
    return type(config)(**{**vars(config), "n_layer": n_layer, "attn_pattern": config.attn_pattern[:n_layer]})


def estimate(model, config, cfg, shards, rows):
    """{part: bytes} per device: `shards` 1, or W under FSDP; `rows` the sequences of a micro-batch on this device."""
    params = [p for p in model.parameters() if p.requires_grad]
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    grad_bytes = sum(p.numel() * p.element_size() for p in params)
    if cfg.optimizer == "muon":  # the blocks' matrices (optim.make_optimizers), the rest AdamW
        muon = sum(p.numel() * 4 for name, p in model.named_parameters() if p.requires_grad and p.dim() == 2 and name.startswith("transformer.h."))
        optimizer_bytes = MUON_STATES * muon + ADAM_STATES * (sum(p.numel() * 4 for p in params) - muon)
    else:
        optimizer_bytes = ADAM_STATES * sum(p.numel() * 4 for p in params)
    return {"weights": weight_bytes / shards, "gradients": grad_bytes / shards, "optimizer": optimizer_bytes / shards,
            "activations": activation_bytes(config, rows, cfg.activation_checkpointing)}


def describe(parts, rows, block_size):
    def size(n):
        return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"

    listed = ", ".join(f"{name} {size(n)}" for name, n in parts.items())
    return f"memory per device (estimate): {listed} (a micro-batch of {rows} x {block_size} tokens): {size(sum(parts.values()))}"
