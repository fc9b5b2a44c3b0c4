"""The precision a model generates in: the --dtype of sample.py, chat.py, serve.py and the bench scripts.

- float32: the weights as trained; exact. On a CPU the linear weights are stored transposed (same values), which
  the one-row product reads faster.
- bfloat16, float16: the whole model cast (weights, activations, KV cache).
- mixed: 16-bit weights, everything else (norms, attention, KV cache, residual stream) in float32: a decode step
  multiplies float16 weights, a prompt bfloat16 ones on CPUs with bfloat16 instructions (gptkit/weight_formats.py).
- int8: int8 linear weights with a float32 scale per output row, everything else in float32; a decode step reads a
  quarter of float32's bytes, through gptkit's own kernel where the C compiler can build it (gptkit/native.py). Its
  cost in quality is measured by bench/precision.py.
- auto: bfloat16 on CUDA; float32 on MPS; on a CPU, the fastest of float32, mixed and int8 for a decode step of this
  model's weight shapes, measured once on this machine (about a second) and remembered, the more exact one unless a
  less exact one is at least 10% faster. Models small enough for the CPU's caches (under 8M linear weights, 32 MB in
  float32) stay float32: their steps are bound by Python more than by memory, and exactness is worth the rest.

Converting is for generation only: a converted model is not trained or saved.
"""
import hashlib
import json
import statistics
import sys
import time

import torch
import torch.nn as nn

from gptkit import native
from gptkit.files import atomic_write, user_cache_folder
from gptkit.machine import cpu_name
from gptkit.weight_formats import HalfWeightLinear, Int8WeightLinear, replace_linears, transposed_linears

DTYPES = ("auto", "float32", "bfloat16", "float16", "mixed", "int8")
HELP = "auto: the fastest of float32, mixed and int8 measured on this CPU, bfloat16 on CUDA; mixed: 16-bit weights; int8: 8-bit weights"
AUTO_CANDIDATES = ("float32", "mixed", "int8")  # most exact first
SMALL_MODEL_WEIGHTS = 8_000_000  # below this (32 MB in float32) the weights stay in a server CPU's cache: float32, exact
MEASURED_WEIGHTS = 48_000_000  # measure over at most this many weights: past a 32 MB cache even in int8, and about a second
LESS_EXACT_GAIN = 0.9  # a less exact precision must take at most this share of the more exact one's time to be picked
CACHE_FILE = "auto_precision.json"


def cpu_has_bf16():
    """Whether this CPU has the bfloat16 dot-product instructions (AVX-512 BF16) that make bfloat16 matmuls fast."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # private in torch; absent means we cannot tell
    return bool(check and check())


def linear_shapes(model):
    """(out, in) of every linear layer of `model`, in order: what a decode step reads."""
    return [(m.out_features, m.in_features) for m in model.modules() if isinstance(m, nn.Linear)]


def resolve_dtype(name, device, shapes=()):
    """The precision `name` stands for on `device`; "auto" on a CPU measures the linear `shapes` (none: float32)."""
    if name != "auto":
        return name
    if device.startswith("cuda"):
        return "bfloat16"
    if device != "cpu" or sum(o * i for o, i in shapes) < SMALL_MODEL_WEIGHTS:
        return "float32"
    return measured_cpu_precision(shapes)


def convert(module, name, device):
    """Convert `module` (eval mode, on `device`) in place to the precision `name` (auto already resolved)."""
    if name == "float32" and device == "cpu":
        transposed_linears(module)
    elif name == "mixed":
        bf16 = not device.startswith("cpu") or cpu_has_bf16()
        replace_linears(module, lambda linear: HalfWeightLinear(linear, many_rows_bf16=bf16))  # embeddings, norms and the KV cache stay float32
    elif name == "int8":
        replace_linears(module, Int8WeightLinear)
    elif name != "float32":
        module.to(getattr(torch, name))


def for_generation(model, name, device):
    """`model` (in eval mode, on `device`) converted in place to the precision `name`; returns the precision used."""
    dtype = resolve_dtype(name, device, linear_shapes(model))
    convert(model, dtype, device)
    return dtype


# --- auto on a CPU: measured --------------------------------------------------------------------------------------

def cache_path():
    return user_cache_folder() / CACHE_FILE


def measured_cpu_precision(shapes):
    """The precision auto picks for these weight shapes on this CPU: remembered per machine, else measured now."""
    kept = measured_shapes(shapes)
    kernel = "own int8 kernel" if native.int8_matvec() is not None else "torch's int8 kernel"
    key = f"{cpu_name()} | {torch.get_num_threads()} threads | torch {torch.__version__} | {kernel} | " \
          f"{hashlib.sha1(repr(kept).encode()).hexdigest()[:12]}"
    path = cache_path()
    try:
        remembered = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        remembered = {}
    if not isinstance(remembered, dict):
        remembered = {}
    if remembered.get(key) in AUTO_CANDIDATES:
        return remembered[key]
    times = decode_times(kept)
    choice = pick(times)
    print(f"auto precision: a decode step's products of this model's weights take "
          f"{', '.join(f'{n} {1000 * t:.1f} ms' for n, t in times.items())} here: {choice} (remembered in {path})", file=sys.stderr, flush=True)
    try:
        with atomic_write(path, "w") as f:
            json.dump({**remembered, key: choice}, f, indent=1)
    except OSError:
        pass  # a read-only home: measured again next time
    return choice


def measured_shapes(shapes):
    """The shapes in order up to MEASURED_WEIGHTS weights (at least one)."""
    kept, total = [], 0
    for o, i in shapes:
        if kept and total + o * i > MEASURED_WEIGHTS:
            break
        kept.append((o, i))
        total += o * i
    return kept


def pick(times):
    """The most exact candidate, unless a less exact one takes at most LESS_EXACT_GAIN of its time."""
    best = AUTO_CANDIDATES[0]
    for name in AUTO_CANDIDATES[1:]:
        if times[name] <= LESS_EXACT_GAIN * times[best]:
            best = name
    return best


@torch.no_grad()
def decode_times(shapes, repeats=3):
    """Median seconds of one-row products through layers of these shapes (zero weights) in each candidate precision."""
    times = {}
    for name in AUTO_CANDIDATES:
        layers = nn.ModuleList(torch.nn.utils.skip_init(nn.Linear, i, o, bias=False) for o, i in shapes)
        for layer in layers:
            layer.weight.zero_()
        convert(layers, name, "cpu")
        inputs = {i: torch.randn(1, i) for _, i in shapes}
        passes = []
        for _ in range(repeats + 1):  # the first pass warms up
            started = time.perf_counter()
            for layer, (_, i) in zip(layers, shapes):
                layer(inputs[i])
            passes.append(time.perf_counter() - started)
        times[name] = statistics.median(passes[1:])
        del layers
    return times

