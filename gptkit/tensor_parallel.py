"""Tensor parallelism (Megatron-style), a transform of a built GPT: each block's matrices split across the `tp` ranks
of a device mesh, so every rank computes 1/tp of the heads and of the MLP, and holds 1/tp of those weights.

- attention's query/key/value projection and the MLP's first layer are split by output rows (ColwiseParallel): a rank
  computes its heads' queries, keys and values, and its share of the MLP's hidden units, from the whole input;
- the two output projections are split by input columns (RowwiseParallel): each rank's partial sums are added up
  (one all-reduce per projection), so the residual stream between them is whole on every rank;
- the embedding and the output layer are split by vocabulary (one matrix when they are tied), and the loss is computed
  on the vocabulary shards without gathering the logits (`loss_parallel`);
- norms, learned positions and a score head stay whole on every rank (no sequence parallelism).

The fused query/key/value matrix is stored as [all queries; all keys; all values]. Split as it is, rank 0 would get
the queries and some keys; so its rows are reordered first (`qkv_order`), rank r's contiguous share holding the
queries, keys and values of heads r*H/tp .. (r+1)*H/tp. Whole state dicts (checkpoints) always hold the stored order:
`to_stored`/`from_stored` convert. model.py counts heads from the projection's width, so it runs unchanged on a share.
"""
import torch
from torch import nn

QKV = ".attn.c_attn."  # the fused query/key/value projection's parameter names contain this


def qkv_order(n_embd, tp):
    """Row indices of c_attn's weight (3 C rows) in the order whose r-th contiguous 1/tp is rank r's heads' q, k, v."""
    share = n_embd // tp
    return torch.cat([torch.arange(part * n_embd + r * share, part * n_embd + (r + 1) * share) for r in range(tp) for part in range(3)])


def from_stored(name, tensor, tp):
    """A whole tensor of parameter `name` (or of its optimizer state) in the stored (checkpoint) order, in the order a
    tensor-parallel model keeps; anything but c_attn's weight and bias comes back unchanged."""
    return tensor[qkv_order(tensor.shape[0] // 3, tp).to(tensor.device)] if _reordered(name, tensor, tp) else tensor


def to_stored(name, tensor, tp):
    return tensor[torch.argsort(qkv_order(tensor.shape[0] // 3, tp)).to(tensor.device)] if _reordered(name, tensor, tp) else tensor


def _reordered(name, tensor, tp):
    """Whether `tensor` (a parameter or one of its optimizer states, e.g. Adam's step count) has c_attn's rows."""
    return tp > 1 and QKV in name and torch.is_tensor(tensor) and tensor.dim() > 0


def check_layout(config, tp):
    """A one-line reason this model cannot be split tp ways, or None."""
    if tp == 1:
        return None
    if config.n_head % tp:
        return f"--tp={tp} splits attention by heads, and n_head={config.n_head} is not a multiple of {tp}"
    if config.vocab_size % tp:
        return f"--tp={tp} splits the output layer by vocabulary, and its {config.vocab_size} entries are not a multiple of {tp}"
    return None


def parallelize(model, mesh, split_logits=True):
    """Split `model` in place over the 1-D device mesh `mesh` (its tensor-parallel ranks); returns it. A pipeline
    stage's part of a model (gptkit/pipeline_parallel.py) may lack the embedding or the output layer. split_logits:
    the logits stay split by vocabulary for `loss_context`; else they are gathered whole (a pipeline's last stage)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp, config = mesh.size(), model.config
    with torch.no_grad():
        for block in model.transformer.h:
            for p in block.attn.c_attn.parameters():
                p.copy_(from_stored(QKV, p, tp))
    for block in model.transformer.h:
        parallelize_module(block, mesh, {"attn.c_attn": ColwiseParallel(), "attn.c_proj": RowwiseParallel(),
                                         "mlp.c_fc": ColwiseParallel(), "mlp.c_proj": RowwiseParallel()})
    plan = {}
    if "wte" in model.transformer:
        plan["transformer.wte"] = RowwiseParallel(input_layouts=Replicate())  # each rank looks up its vocabulary rows
    if hasattr(model, "lm_head"):
        plan["lm_head"] = (ColwiseParallel(output_layouts=Shard(-1), use_local_output=False) if split_logits  # for loss_parallel
                           else ColwiseParallel(output_layouts=Replicate()))
    parallelize_module(model, mesh, plan)
    if config.tie_embeddings and len(plan) == 2:  # both were split by vocabulary rows alike; share the one matrix again
        model.lm_head.weight = model.transformer.wte.weight
    return model


def loss_context(tp):
    """Where the cross-entropy of vocabulary-split logits is computed (and its backward run)."""
    from contextlib import nullcontext

    if tp == 1:
        return nullcontext()
    from torch.distributed.tensor.parallel import loss_parallel

    return loss_parallel()


def local_model(model, tp):
    """The model one of tp ranks computes, with plain tensors (on the meta device, for the memory estimate): each block's
    projections and the output layer narrowed to 1/tp."""
    def narrowed(linear, rows, cols):
        return nn.Linear(linear.in_features // cols, linear.out_features // rows, bias=linear.bias is not None,
                         device=linear.weight.device)

    for block in model.transformer.h:
        block.attn.c_attn, block.mlp.c_fc = narrowed(block.attn.c_attn, tp, 1), narrowed(block.mlp.c_fc, tp, 1)
        block.attn.c_proj, block.mlp.c_proj = narrowed(block.attn.c_proj, 1, tp), narrowed(block.mlp.c_proj, 1, tp)
    model.lm_head = narrowed(model.lm_head, tp, 1)
    return model
