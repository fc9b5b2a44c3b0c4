"""The one-token decode step of an int8 model in one native call (gptkit/kernels/decode_step.c), for Engine.

At batch 1 on a CPU the weight products take about 7 ms a token for GPT-2 small; PyTorch's ~300 other operations
around them (norms, views, attention for one query, residual adds, module calls) took another 3-5 ms. The native step
runs the same arithmetic in one call. It serves what it can and PyTorch the rest: `NativeStep.build` returns None for
a model that is not int8 or not on a CPU, has local attention layers (rings), widths the kernels cannot read, or
where the kernels cannot be built (and GPTKIT_NO_NATIVE=1 turns it off).
"""
import ctypes

import torch

from gptkit import native
from gptkit.weight_formats import Int8WeightLinear

ptr = ctypes.c_void_p


class Linear(ctypes.Structure):
    _fields_ = [("w", ptr), ("scale", ptr), ("bias", ptr), ("n", ctypes.c_int64), ("k", ctypes.c_int64)]


class Layer(ctypes.Structure):
    _fields_ = [("norm1_w", ptr), ("norm1_b", ptr), ("norm2_w", ptr), ("norm2_b", ptr),
                ("qkv", Linear), ("attn_out", Linear), ("fc", Linear), ("mlp_out", Linear), ("k_cache", ptr), ("v_cache", ptr)]


class Model(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in ("n_layer", "n_head", "n_embd", "slots", "rmsnorm", "relu2", "qk_norm", "rope")] + \
               [("norm_eps", ctypes.c_double), ("qk_eps", ctypes.c_double), ("wte", ptr), ("pos_add", ptr), ("rope_cos", ptr),
                ("rope_sin", ptr), ("final_w", ptr), ("final_b", ptr), ("head", Linear), ("layers", ctypes.POINTER(Layer)), ("work", ptr)]


def address(tensor):
    return None if tensor is None else tensor.data_ptr()


def linear_struct(layer):
    return Linear(address(layer.weight_int8), address(layer.scale), address(layer.bias), *layer.weight_int8.shape)


def norm_eps(module):
    return module.eps if module.eps is not None else torch.finfo(torch.float32).eps  # RMSNorm's None: float32's epsilon


def why_not(model, cache):
    """Why the native step cannot run this model on this cache, or None."""
    c = model.config
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear | Int8WeightLinear)]
    if not linears or not all(isinstance(m, Int8WeightLinear) for m in linears):
        return "not an int8 model"
    if next(model.parameters()).device.type != "cpu" or cache.k[0].shape[0] != 1 or cache.dtype != torch.float32:
        return "not a batch-1 float32 cache on a CPU"
    if c.has_local_layers():
        return "local attention layers"
    if any(m.weight_int8.shape[1] % native.K_MULTIPLE for m in linears) or (c.n_embd // c.n_head) % 8:
        return "widths the kernels cannot read"
    if any(not t.is_contiguous() for t in cache.k + cache.v):
        return "a cache that is not contiguous"
    return None


class NativeStep:
    """decode_step.c bound to one model and one KV cache: step(token, pos) -> logits (1, V)."""

    @classmethod
    def build(cls, model, cache):
        """A NativeStep, or None where it cannot serve (see the module)."""
        if why_not(model, cache) is not None:
            return None
        function = native.decode_step()
        return None if function is None else cls(model, cache, function)

    def __init__(self, model, cache, function):
        c, t = model.config, model.transformer
        self.function, self.model, self.cache = function, model, cache  # held: the structure points into their tensors
        slots = cache.k[0].shape[2]
        self.work = torch.empty(10 * c.n_embd + c.n_head * slots)
        self.layers = (Layer * c.n_layer)(*(Layer(
            address(b.ln_1.weight), address(getattr(b.ln_1, "bias", None)), address(b.ln_2.weight), address(getattr(b.ln_2, "bias", None)),
            linear_struct(b.attn.c_attn), linear_struct(b.attn.c_proj), linear_struct(b.mlp.c_fc), linear_struct(b.mlp.c_proj),
            address(cache.k[i]), address(cache.v[i])) for i, b in enumerate(t.h)))
        rope = c.pos_encoding == "rope"
        pos_add = t.wpe.weight if c.pos_encoding == "learned" else model.pos_table if c.pos_encoding == "sinusoidal" else None
        self.rope_tables = (model.pos_table[0].contiguous(), model.pos_table[1].contiguous()) if rope else (None, None)
        self.struct = Model(
            c.n_layer, c.n_head, c.n_embd, slots, c.norm == "rmsnorm", c.mlp == "relu2", c.qk_norm, rope,
            norm_eps(t.ln_f), torch.finfo(torch.float32).eps,
            address(t.wte.weight), address(pos_add), *map(address, self.rope_tables),
            address(t.ln_f.weight), address(getattr(t.ln_f, "bias", None)), linear_struct(model.lm_head), self.layers, address(self.work))
        self.vocab_size = model.lm_head.weight_int8.shape[0]

    def step(self, token_id, pos):
        """The logits (1, V) after `token_id` at cache position `pos`; the cache then holds pos + 1 positions."""
        if not 0 <= token_id < self.model.config.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary of {self.model.config.vocab_size}")
        if not 0 <= pos < self.struct.slots:
            raise ValueError(f"position {pos} is past the cache's {self.struct.slots} slots")
        logits = torch.empty(1, self.vocab_size)
        self.function(ctypes.addressof(self.struct), token_id, pos, logits.data_ptr(), torch.get_num_threads())
        return logits
