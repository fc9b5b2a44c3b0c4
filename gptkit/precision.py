"""The precision a model generates in: the --dtype of sample.py, chat.py and the bench scripts.

- float32: the weights as trained; exact. On a CPU the linear weights are stored transposed (same values), which
  the one-row product reads faster.
- bfloat16, float16: the whole model cast (weights, activations, KV cache).
- mixed: 16-bit weights, everything else (norms, attention, KV cache, residual stream) in float32. For CPUs, where
  batch-1 generation is bound by reading the weights: one row of input (a decode step) multiplies float16 weights
  (torch's float16 matrix-vector kernel), several rows (a prompt, beams) bfloat16 weights (the CPU's bfloat16
  dot-product instructions), the faster format for each; each linear layer keeps both copies, as much memory as its
  float32 weights. Measured by bench/precision.py on an AMD EPYC with AVX-512 BF16, for GPT-2 small's weights against
  float32: one row 4.3x faster in float16 (2.9x in bfloat16), 128 rows 4.9x faster in bfloat16 (3x slower in float16).
- auto: bfloat16 on CUDA, mixed on a CPU with AVX-512 BF16 instructions, float32 elsewhere (including MPS).

Converting is for generation only: a converted model is not trained or saved.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

DTYPES = ("auto", "float32", "bfloat16", "float16", "mixed")
HELP = "auto: bfloat16 on CUDA, mixed on a CPU with AVX-512 BF16, else float32; mixed: 16-bit weights, float32 activations"


def cpu_has_bf16():
    """Whether this CPU has the bfloat16 dot-product instructions (AVX-512 BF16) that make bfloat16 matmuls fast."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # private in torch; absent means we cannot tell
    return bool(check and check())


def resolve_dtype(name, device):
    """The precision `name` stands for on `device` ("auto" resolved)."""
    if name != "auto":
        return name
    if device.startswith("cuda"):
        return "bfloat16"
    return "mixed" if device == "cpu" and cpu_has_bf16() else "float32"


class HalfWeightLinear(nn.Module):
    """A linear layer for generation with float16 and bfloat16 copies of its weights; input and output keep their dtype.

    One row of input (a decode step at batch 1) multiplies the float16 copy; more rows (a prompt, a beam) the bfloat16 one.
    Both kernels accumulate in float32.
    """

    def __init__(self, linear):
        super().__init__()
        weight, bias = linear.weight.detach(), linear.bias
        self.register_buffer("weight_f16", weight.to(torch.float16))
        self.register_buffer("weight_bf16", weight.to(torch.bfloat16))
        self.register_buffer("bias_f16", None if bias is None else bias.detach().to(torch.float16))
        self.register_buffer("bias_bf16", None if bias is None else bias.detach().to(torch.bfloat16))

    def forward(self, x):
        if x.shape[:-1].numel() == 1:
            return F.linear(x.to(torch.float16), self.weight_f16, self.bias_f16).to(x.dtype)
        return F.linear(x.to(torch.bfloat16), self.weight_bf16, self.bias_bf16).to(x.dtype)


def replace_linears(module, make):
    """Replace every nn.Linear under `module` with make(linear), in place; returns `module`."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, make(child))
        else:
            replace_linears(child, make)
    return module


def half_weight_linears(module):
    """Replace every nn.Linear under `module` with a HalfWeightLinear, in place."""
    return replace_linears(module, HalfWeightLinear)


def transposed_linears(module):
    """Store every linear weight transposed in memory, in place: the same values and shape, read faster by a one-row
    product on a CPU (torch's float32 matrix-vector kernel; 1.28x for GPT-2 small in bench/precision.py). A tied
    output layer shares this storage with the embedding, whose lookups do not mind."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.weight.data = m.weight.data.t().contiguous().t()


def for_generation(model, name, device):
    """`model` (in eval mode, on `device`) converted in place to the precision `name`; returns the precision used."""
    dtype = resolve_dtype(name, device)
    if dtype == "float32" and device == "cpu":
        transposed_linears(model)
    elif dtype == "mixed":
        half_weight_linears(model)  # embeddings, norms and the KV cache (which follows them) stay float32
    elif dtype != "float32":
        model.to(getattr(torch, dtype))
    return dtype
