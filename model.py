"""A compact decoder-only GPT: GPTConfig, two named presets, and a KV cache for generation.

Shapes: B batch, T time (tokens), C channels (n_embd), H heads, D head size (C // H), V vocabulary.
"""
import copy
import functools
import math
import warnings
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

# Each preset fixes the architecture; sizes (n_layer, n_head, n_embd, block_size, vocab_size) are free.
PRESETS = {
    # GPT-2's layout, so its published weights load as they are.
    "gpt2": dict(pos_encoding="learned", norm="layernorm", mlp="gelu", qk_norm=False, tie_embeddings=True, bias=True, zero_init_proj=False),
    # What trains best from scratch today (modded-nanogpt and friends).
    "modern": dict(pos_encoding="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, tie_embeddings=False, bias=False, zero_init_proj=True),
}
GPT2_SIZES = {  # name: (n_layer, n_head, n_embd) of the published checkpoints
    "gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600),
}


@dataclass
class GPTConfig:
    vocab_size: int = 50304
    block_size: int = 1024  # the longest context
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    pos_encoding: str = "learned"  # learned | sinusoidal | rope
    norm: str = "layernorm"  # layernorm | rmsnorm
    mlp: str = "gelu"  # gelu | relu2
    qk_norm: bool = False
    tie_embeddings: bool = True
    bias: bool = True
    zero_init_proj: bool = False
    rope_base: float = 10000.0
    # Sparse attention, as GPT-3's alternating dense and locally banded layers: a local layer's query sees the `window`
    # latest keys, itself included. attn_pattern is read cyclically over the layers (L local, G global), the last layer
    # global unless the pattern names every layer; "" (or a window covering the context) is dense everywhere.
    window: int = 0
    attn_pattern: str = ""
    # A reward model or a critic: a scalar per position read from the final hidden state (forward(..., scores=True)).
    score_head: bool = False

    @classmethod
    def from_preset(cls, preset, **sizes):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
        return cls(**PRESETS[preset], **sizes)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rope needs an even head size; n_embd/n_head = {self.n_embd // self.n_head}")
        for name, allowed in (("pos_encoding", ("learned", "sinusoidal", "rope")), ("norm", ("layernorm", "rmsnorm")), ("mlp", ("gelu", "relu2"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {', '.join(allowed)}")
        if set(self.attn_pattern) - set("LG"):
            raise ValueError(f"attn_pattern={self.attn_pattern!r} may hold only L (local) and G (global), e.g. LG or LLLG")
        if len(self.attn_pattern) > self.n_layer:
            raise ValueError(f"attn_pattern={self.attn_pattern!r} names more layers than the model's {self.n_layer}")
        if self.window < 0 or ("L" in self.attn_pattern) != (self.window > 0):
            raise ValueError(f"window={self.window} with attn_pattern={self.attn_pattern!r}: local layers (L) need a window of at least 1 "
                             "key, and a window needs an L in the pattern")

    def has_local_layers(self):
        return any(self.layer_window(layer) for layer in range(self.n_layer))

    def layer_window(self, layer):
        """The keys a query of `layer` sees, itself included; 0 means all before it (a global layer)."""
        if not self.attn_pattern or self.window >= self.block_size:
            return 0
        last_global = layer == self.n_layer - 1 and len(self.attn_pattern) < self.n_layer
        return self.window if self.attn_pattern[layer % len(self.attn_pattern)] == "L" and not last_global else 0


RING_SLACK = 64  # a ring's slots beyond the window: how far back a chat may rewind (an edited last turn) and keep its cache


class KVCache:
    """Preallocated keys and values, one (B, H, slots, D) buffer per layer; `pos` tokens are filled.

    The one cache layout: prefill, one-token decode, beam search (reorder) and the compiled decode step all use it.
    A buffer per layer lets a compiled step write each layer's keys in place; one (n_layer, ...) buffer for all
    layers would become a copy of the whole buffer per layer in the compiled graph (6x slower than eager on a CPU).

    A global layer's buffer holds every position (max_len slots). A local layer's is a ring of window + RING_SLACK
    slots, position p in slot p % slots, keys stored after the rotary rotation beside their absolute positions
    (`slot_pos`, -1 when empty), so its memory stays the same however long the conversation grows.
    """

    def __init__(self, config, batch_size, max_len, device, dtype=torch.float32, rings=True):
        self.max_len, self.window, self.pos = max_len, config.window, 0
        self.k, self.v, self.slot_pos = [], [], []
        for layer in range(config.n_layer):
            window = config.layer_window(layer)
            ring = rings and bool(window) and window + RING_SLACK < max_len  # a ring as long as the buffer would save nothing
            shape = (batch_size, config.n_head, window + RING_SLACK if ring else max_len, config.n_embd // config.n_head)
            self.k.append(torch.zeros(shape, device=device, dtype=dtype))
            self.v.append(torch.zeros(shape, device=device, dtype=dtype))
            self.slot_pos.append(torch.full(shape[2:3], -1, dtype=torch.long, device=device) if ring else None)
        self.ring_slots = min((k.shape[2] for k, s in zip(self.k, self.slot_pos) if s is not None), default=0)
        self.high = 0  # the furthest position written since the cache last started from 0 (what a ring may have overwritten)

    @property
    def dtype(self):
        return self.k[0].dtype

    def nbytes(self):
        """The memory the keys and values take."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def is_ring(self, layer):
        return self.slot_pos[layer] is not None

    def append(self, layer, k, v):
        """Store this step's (B, H, T, D) keys and values in a full buffer; return all keys and values so far."""
        end = self.pos + k.shape[2]
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def write_ring(self, layer, k, v):
        """Store the last (up to a ring's worth of) this step's keys and values in a ring, at slots position % slots."""
        T, slots = k.shape[2], self.k[layer].shape[2]
        n = min(T, slots)
        positions = torch.arange(self.pos + T - n, self.pos + T, device=k.device)
        index = positions % slots
        self.k[layer].index_copy_(2, index, k[:, :, T - n:].to(self.dtype))
        self.v[layer].index_copy_(2, index, v[:, :, T - n:].to(self.dtype))
        self.slot_pos[layer].index_copy_(0, index, positions)

    def rewind(self, pos):
        """Go back to holding the first `pos` tokens; what comes after is overwritten by the next forward.

        Returns `pos`, or 0 when a ring no longer holds the window of keys before `pos` (a rewind further back than
        RING_SLACK): the caller then prefills from the start.
        """
        self.high = max(self.high, self.pos)
        if self.ring_slots and max(0, pos - self.window) < self.high - self.ring_slots:
            pos = 0
        if pos == 0:
            self.high = 0
        self.pos = pos
        return pos

    def rows(self, rows, pos):
        """A cache over some batch rows of these buffers (a slice: no copy), at `pos`: an int, or a (B,) tensor of each
        row's length for a one-token step where every row is at its own position (batched serving). Not for rings."""
        view = copy.copy(self)
        view.k, view.v, view.pos = [t[rows] for t in self.k], [t[rows] for t in self.v], pos
        return view

    def swap_rows(self, a, b):
        """Exchange two batch rows' keys and values (a server keeps its running sequences in the first rows)."""
        for buffer in self.k + self.v:
            buffer[[a, b]] = buffer[[b, a]]

    def reorder(self, rows):
        """Make the first len(rows) batch rows copies of `rows` (beam search follows its surviving beams)."""
        for buffers in (self.k, self.v):
            for buffer in buffers:
                buffer[:len(rows)] = buffer[rows]


def norm(config, size):
    return nn.LayerNorm(size, bias=config.bias) if config.norm == "layernorm" else nn.RMSNorm(size)


def apply_rope(x, cos, sin):
    """Rotate pairs of channels (first half, second half) by position-dependent angles. x: (B, H, T, D)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def band_mask(T, past, window, device):
    """(T, past + T): new token t (at past + t) sees the keys at (past + t - window, past + t]; window 0: all up to itself."""
    ones = torch.ones(T, past + T, dtype=torch.bool, device=device)
    mask = ones.tril(diagonal=past)
    return mask & ~ones.tril(diagonal=past - window) if window else mask


QUERY_BLOCK = 128  # queries per block of the blocked layout: CPU SDPA is quickest at about this size (2x at window 256)


def blocked_local_attention(q, k, v, window, dropout_p=0.0, block=QUERY_BLOCK):
    """Banded attention without the masked-out work, (B, H, T, D) in and out: each block of b = min(window, block)
    queries attends to the window - 1 keys before the block and the block's own, window + b - 1 keys in all.
    Exact: no query of the block sees further back than that."""
    B, H, T, D = q.shape
    W, b = window, min(window, block)
    n = -(-T // b)  # blocks; the last is padded (padded queries are dropped, padded keys lie in no real query's past)
    span = W + b - 1
    q = F.pad(q, (0, 0, 0, n * b - T)).view(B, H, n, b, D)
    # W - 1 zero keys in front, so block i's keys are positions [i*b - W + 1, i*b + b) of the sequence: padded [i*b, i*b + span)
    k, v = (F.pad(t, (0, 0, W - 1, n * b - T)).unfold(2, span, b).transpose(-1, -2) for t in (k, v))  # (B, H, n, span, D)
    i, j = torch.arange(b, device=q.device)[:, None], torch.arange(span, device=q.device)[None, :]
    first = torch.arange(n, device=q.device)[:, None, None] * b + j - (W - 1)  # each key's position in the sequence
    mask = (j >= i) & (j < i + W) & (first >= 0)  # (n, b, span): the band of query i, and no padding keys in front
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return y.reshape(B, H, n * b, D)[:, :, :T]


@functools.cache
def band_block_mask(T, window, device):
    """FlexAttention's block mask of the band: which 128 x 128 tiles hold any key a query sees (built once per shape)."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(lambda b, h, q, k: (k <= q) & (q - k < window), None, None, T, T, device=device)


@functools.cache
def compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)  # one fused kernel; eager FlexAttention is a slow reference


def flex_local_attention(q, k, v, window, compiled=True):
    """Banded attention through FlexAttention, which skips the tiles outside the band: the CUDA path (on a CPU, torch 2.13's
    FlexAttention has no backward pass; compiled=False runs its eager reference, which the tests check on a CPU)."""
    from torch.nn.attention.flex_attention import flex_attention

    attend = compiled_flex_attention() if compiled else flex_attention
    return attend(q, k, v, block_mask=band_block_mask(q.shape[2], window, str(q.device)))


FLEX = {"enabled": True}  # turned off for the process if FlexAttention fails on this GPU (the SDPA paths below remain)


def fresh_attention(q, k, v, window, dropout_p=0.0):
    """Causal attention with nothing cached before (B, H, T, D): blocked beyond 2W tokens, band-masked beyond W, else plain causal."""
    T = q.shape[2]
    # FlexAttention in training only: compiled for one shape, it would recompile for every prompt length of generation
    if window and T > window and q.is_cuda and torch.is_grad_enabled() and dropout_p == 0 and FLEX["enabled"]:
        try:
            return flex_local_attention(q, k, v, window)
        except Exception as e:  # an old GPU or a compiler error: exact SDPA instead, and say so once
            FLEX["enabled"] = False
            warnings.warn(f"FlexAttention failed ({type(e).__name__}: {e}); local layers use SDPA", stacklevel=2)
    if window and T > 2 * window:
        return blocked_local_attention(q, k, v, window, dropout_p)
    if window and T > window:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=band_mask(T, 0, window, q.device), dropout_p=dropout_p)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)


def per_row_attention(q, k, v, cache, layer, window):
    """One new token per row, each row at its own position cache.pos[b] (B,): store its key and value there, and attend
    to that row's keys up to it (its last `window` when the layer is local)."""
    pos, rows = cache.pos, torch.arange(q.shape[0], device=q.device)
    cache.k[layer][rows, :, pos] = k[:, :, 0].to(cache.dtype)
    cache.v[layer][rows, :, pos] = v[:, :, 0].to(cache.dtype)
    end = int(pos.max()) + 1
    key_pos = torch.arange(end, device=q.device)[None, :]
    mask = key_pos <= pos[:, None]
    if window:
        mask &= key_pos > pos[:, None] - window
    return F.scaled_dot_product_attention(q, cache.k[layer][:, :, :end], cache.v[layer][:, :, :end], attn_mask=mask[:, None, None, :])


def ring_attention(q, k, v, cache, layer, window):
    """A local layer's attention over its ring and this step's keys, then the ring keeps the newest of them.

    New token t (at position past + t) sees the ring's keys at positions in (past + t - window, past) and the new
    keys of the band; slots that are empty or hold positions from past onwards (left by a rewind) are masked out.
    """
    past, T = cache.pos, q.shape[2]
    if past == 0:  # nothing before: the ring only holds leftovers
        y = fresh_attention(q, k, v, window)
    else:
        slot_pos = cache.slot_pos[layer]
        query_pos = torch.arange(past, past + T, device=q.device)[:, None]
        from_ring = (slot_pos >= 0) & (slot_pos < past) & (slot_pos > query_pos - window)  # (T, slots)
        mask = torch.cat((from_ring, band_mask(T, 0, window, q.device)), dim=1)
        keys = torch.cat((cache.k[layer], k.to(cache.dtype)), dim=2)
        values = torch.cat((cache.v[layer], v.to(cache.dtype)), dim=2)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    cache.write_ring(layer, k, v)
    return y


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.layer, self.head_size, self.qk_norm = layer, config.n_embd // config.n_head, config.qk_norm
        self.window = config.layer_window(layer)  # 0: a global layer
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x, rope, kv_cache):
        B, T, _ = x.shape
        # Heads counted from the projection's width, not the config: under tensor parallelism a rank computes only its
        # share of them (gptkit/tensor_parallel.py), with its queries, keys and values in that order.
        q, k, v = self.c_attn(x).chunk(3, dim=2)
        q, k, v = (t.view(B, T, -1, self.head_size).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        dropout_p = self.dropout if self.training else 0.0
        if kv_cache is not None and torch.is_tensor(kv_cache.pos):
            y = per_row_attention(q, k, v, kv_cache, self.layer, self.window)
        elif kv_cache is not None and kv_cache.is_ring(self.layer):
            y = ring_attention(q, k, v, kv_cache, self.layer, self.window)
        elif kv_cache is None or kv_cache.pos == 0:
            if kv_cache is not None:
                kv_cache.append(self.layer, k, v)
            y = fresh_attention(q, k, v, self.window, dropout_p)
        else:  # new tokens after a cached prefix: all cached keys and the new ones, under the band of a local layer's window
            past = kv_cache.pos
            k, v = kv_cache.append(self.layer, k, v)  # (B, H, past + T, D)
            if T == 1 and (not self.window or past < self.window):
                mask = None  # one new token that sees everything before it
            else:
                mask = band_mask(T, past, self.window if past + T > self.window else 0, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)  # (B, T, C), or this rank's C / tp
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.relu2 = config.mlp == "relu2"

    def forward(self, x):
        h = self.c_fc(x)
        h = F.relu(h).square() if self.relu2 else F.gelu(h, approximate="tanh")
        return self.c_proj(h)


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = norm(config, config.n_embd)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, rope, kv_cache):
        x = x + self.drop(self.attn(self.ln_1(x), rope, kv_cache))
        return x + self.drop(self.mlp(self.ln_2(x)))


def token_loss(logits, targets, reduction="mean"):
    """Cross-entropy of (B, T, V) logits against (B, T) targets, in float32; a target of -1 is not scored."""
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1, reduction=reduction)


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
            ln_f=norm(config, config.n_embd),
        ))
        if config.pos_encoding == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        if config.score_head:
            self.score_head = nn.Linear(config.n_embd, 1)
        if config.pos_encoding != "learned":  # fixed tables, rebuilt rather than saved
            self.register_buffer("pos_table", self._position_table(), persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual outputs: zero, or scaled down with depth as in GPT-2
                if config.zero_init_proj:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _position_table(self):
        """rope: (2, T, D/2) cosines and sines; sinusoidal: (T, C) as in 'Attention Is All You Need'."""
        c = self.config
        size = c.n_embd // c.n_head if c.pos_encoding == "rope" else c.n_embd
        inv_freq = 1.0 / (c.rope_base ** (torch.arange(0, size, 2, dtype=torch.float32) / size))
        angles = torch.outer(torch.arange(c.block_size, dtype=torch.float32), inv_freq)
        if c.pos_encoding == "rope":
            return torch.stack((angles.cos(), angles.sin()))
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)  # interleaved sin, cos

    def forward(self, idx, targets=None, kv_cache=None, reduction="mean", last_only=False, scores=False):
        """idx (B, T) -> logits (B, T, V); with targets (B, T), the cross-entropy instead (ignore_index -1).

        last_only: logits of the last position only, (B, 1, V): all a prefill needs, without the output layer's cost on the rest.
        scores: the score head's (B, T) scalars instead of logits (a model built with score_head=True).
        """
        B, T = idx.shape
        start = kv_cache.pos if kv_cache is not None else 0
        if torch.is_tensor(start):  # each row at its own position (KVCache.rows)
            positions, end = start[:, None] + torch.arange(T, device=idx.device), int(start.max()) + T  # (B, T)
        else:
            positions, end = torch.arange(start, start + T, device=idx.device), start + T  # (T,)
        if end > self.config.block_size:
            raise ValueError(f"sequence of {end} tokens is longer than the model's context of {self.config.block_size}")
        x = self.embed(idx, positions)
        rope = self.rotary(positions, x.dtype)
        for block in self.transformer.h:
            x = block(x, rope, kv_cache)
        if kv_cache is not None:
            kv_cache.pos += T
        if last_only and targets is None:
            x = x[:, -1:, :]
        x = self.transformer.ln_f(x)
        if scores:
            return self.score_head(x).squeeze(-1)  # (B, T)
        logits = self.lm_head(x)  # (B, T, V)
        if targets is None:
            return logits
        return token_loss(logits, targets, reduction)

    # The pieces of forward that a pipeline stage (gptkit/pipeline_parallel.py) runs on its own.

    def embed(self, idx, positions):
        """(B, T) token ids at `positions` -> (B, T, C): the token embeddings, plus learned or sinusoidal positions."""
        x = self.transformer.wte(idx)
        if self.config.pos_encoding == "learned":
            x = x + self.transformer.wpe(positions)
        elif self.config.pos_encoding == "sinusoidal":
            x = x + self.pos_table[positions].to(x.dtype)
        return self.transformer.drop(x)

    def rotary(self, positions, dtype):
        """Rope's (cos, sin) for `positions`, (T, D/2) each or (B, 1, T, D/2) for a (B, T) tensor; None without rope."""
        if self.config.pos_encoding != "rope":
            return None
        cos, sin = self.pos_table[:, positions].to(dtype)
        return (cos, sin) if positions.dim() == 1 else (cos[:, None], sin[:, None])

    def num_params(self):
        """All parameters, the tied embedding counted once (as the published GPT-2 counts are)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self):
        """Training FLOPs per token (forward and backward): 6 per matmul weight, plus attention over the full context."""
        c = self.config
        matmul = sum(p.numel() for name, p in self.named_parameters() if p.dim() == 2 and ".wte." not in f".{name}" and ".wpe." not in f".{name}")
        if c.tie_embeddings:
            matmul += self.lm_head.weight.numel()  # the shared matrix is also the output layer's
        return 6 * matmul + 12 * c.n_layer * c.n_embd * c.block_size
