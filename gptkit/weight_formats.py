"""Linear layers in the weight formats of generation (gptkit/precision.py picks one): a converted model is for
generation only, never trained or saved.

At batch 1 a CPU decode step is bound by reading the weights, so fewer bytes per weight decode faster, as long as the
kernel that reads them keeps up with memory. Measured on a 2-core AMD EPYC (AVX2, no AVX-512) over GPT-2 small's block
weights (too large for the caches), one row of input: float32 19.5 ms (17 GB/s), float16 9.5 ms (18 GB/s), int8 8.3 ms
(10 GB/s: its kernel, not memory, is the limit there).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit import native


class HalfWeightLinear(nn.Module):
    """A linear layer with 16-bit copies of its weights; input and output keep their dtype.

    One row of input (a decode step at batch 1) multiplies the float16 copy (torch's float16 matrix-vector kernel).
    Several rows (a prompt, a beam) multiply a bfloat16 copy on CPUs with bfloat16 instructions (`many_rows_bf16`),
    else the float16 copy widened to float32 for the call: bfloat16 products without those instructions are several
    times slower than float32's. All kernels accumulate in float32.
    """

    def __init__(self, linear, many_rows_bf16=True):
        super().__init__()
        weight, bias = linear.weight.detach(), linear.bias
        self.register_buffer("weight_f16", weight.to(torch.float16))
        self.register_buffer("bias_f16", None if bias is None else bias.detach().to(torch.float16))
        self.register_buffer("weight_bf16", weight.to(torch.bfloat16) if many_rows_bf16 else None)
        self.register_buffer("bias_bf16", None if bias is None or not many_rows_bf16 else bias.detach().to(torch.bfloat16))

    def forward(self, x):
        if x.shape[:-1].numel() == 1:
            return F.linear(x.to(torch.float16), self.weight_f16, self.bias_f16).to(x.dtype)
        if self.weight_bf16 is not None:
            return F.linear(x.to(torch.bfloat16), self.weight_bf16, self.bias_bf16).to(x.dtype)
        bias = None if self.bias_f16 is None else self.bias_f16.float()
        return F.linear(x.float(), self.weight_f16.float(), bias).to(x.dtype)


class Int8WeightLinear(nn.Module):
    """A linear layer with int8 weights, one float32 scale per output row (symmetric: the row's largest |weight| is 127);
    a quarter of float32's bytes, and the rounding of each weight at most half a step of its row.

    One row of input on a CPU, of a width that is a multiple of 32, goes through gptkit's own kernel (gptkit/native.py:
    float32 input, the weights widened to float32 as they are read), or where it cannot be built, torch's int8
    matrix-vector kernel, which reads bfloat16 input, the row's scale applied after in float32. Other widths, several
    rows, or another device multiply the weights widened to float32.
    """

    def __init__(self, linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None]).to(torch.int8).contiguous())
        self.register_buffer("scale", scale)
        self.register_buffer("ones_bf16", torch.ones_like(scale, dtype=torch.bfloat16))  # the kernel's own scales: 1, exact in bfloat16
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x):
        rows = x.reshape(-1, x.shape[-1])
        # Both one-row kernels read the input 32 (gptkit's) or 16 (torch's, with AVX-512) at a time: torch's returns
        # garbage (inf) for other widths, so a layer whose input width is not a multiple of 32 takes the float32 path.
        if rows.shape[0] == 1 and rows.device.type == "cpu" and rows.shape[1] % native.K_MULTIPLE == 0:
            kernel = native.int8_matvec()
            if kernel is not None:  # the bias added inside: one operation fewer per layer and token
                row, y = rows.float().contiguous(), torch.empty(1, self.scale.shape[0])
                kernel(self.weight_int8.data_ptr(), self.scale.data_ptr(), None if self.bias is None else self.bias.data_ptr(),
                       row.data_ptr(), row.shape[1], y.shape[1], y.data_ptr(), torch.get_num_threads())
                return y.to(x.dtype).reshape(*x.shape[:-1], -1)
            y = torch._weight_int8pack_mm(rows.to(torch.bfloat16), self.weight_int8, self.ones_bf16).float() * self.scale
        else:
            y = F.linear(rows.float(), self.weight_int8.float()) * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], -1)


def replace_linears(module, make):
    """Replace every nn.Linear under `module` with make(linear), in place; returns `module`."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, make(child))
        else:
            replace_linears(child, make)
    return module


def transposed_linears(module):
    """Store every linear weight transposed in memory, in place: the same values and shape, read faster by a one-row
    product on a CPU (torch's float32 matrix-vector kernel; 1.28x for GPT-2 small in bench/precision.py). A tied
    output layer shares this storage with the embedding, whose lookups do not mind."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.weight.data = m.weight.data.t().contiguous().t()
