"""Does llama.cpp run our GGUF export as we run the checkpoint? python bench/gguf_parity.py --ckpt=out_small_gpt2

Needs llama-cpp-python (`CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python`, about 12 minutes to build here)
and a gpt2-preset checkpoint (`python train.py --preset=gpt2 --out_dir=out_small_gpt2 --max_iters=300`). For each GGUF type it exports the
checkpoint, loads it in llama.cpp (float32 KV cache) and prints:
  tokenize   whether llama.cpp's token ids equal ours on English, code, Chinese, emoji and whitespace runs;
  logits     the largest difference from our float32 logits over --tokens tokens of text, and from ours with
             llama.cpp's own GELU (a table of float16 inputs and outputs on its CPU backend);
  greedy     how many of --tokens greedy tokens from the same prompt agree before the first difference.
The last line is `gguf_parity: f32_logit_diff=... f32_same_gelu=... tokenize=ok greedy_f32=N/M`.
"""
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gptkit.checkpoint import build_model
from gptkit.engine import generate
from gptkit.errors import UsageError, run_cli
from gptkit.gguf_export import GGUF_TYPES, write_gguf
from gptkit.loading import load_any_checkpoint
from gptkit.machine import describe_machine, reproduce_command
from gptkit.options import option, parse_options

TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog. It's 3:14 -- isn't it?",
    "code": "def f(x):\n    return {'a': [1, 22, 333, 4444]}\n\n\nclass A:\n\tpass\n",
    "chinese": "你好，世界。今天天气很好。",
    "emoji": "🙂👍🏽 ok 🎉",
    "whitespace": "   three spaces\n\n\n  \t\t tabs  \r\n trailing   ",
}
PROMPT = "import os\nimport sys\n\n\ndef main():\n"
GGML_F32 = 0  # llama.cpp's type id for float32, for its KV cache


@dataclass
class GGUFBenchConfig:
    ckpt: str = option("out_small_gpt2", "a gpt2-preset checkpoint (file or folder)")
    tokens: int = option(64, "tokens of text compared for logits, and greedy tokens generated", bounds="[2, 100000]")
    types: str = option(",".join(GGUF_TYPES), "the GGUF types to try, comma-separated")
    threads: int = option(2, "llama.cpp's threads", bounds=">=1")


def llama_cpp_gelu(x, approximate="none", _gelu=torch.nn.functional.gelu):
    """GELU as llama.cpp's CPU backend computes it: looked up in a table of float16 inputs and outputs."""
    return _gelu(x.half().float(), approximate=approximate).half().float()


def our_logits(model, ids, n_vocab, gelu=None):
    original = torch.nn.functional.gelu
    torch.nn.functional.gelu = gelu or original
    try:
        with torch.no_grad():
            return model(torch.tensor([ids]))[0, :, :n_vocab].float().numpy()
    finally:
        torch.nn.functional.gelu = original


def agreeing_prefix(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def measure(llama_cpp, model, tokenizer, gguf_type, cfg, folder):
    path = write_gguf(model, tokenizer, Path(folder) / f"bench-{gguf_type}.gguf", gguf_type)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=model.config.block_size, logits_all=True, verbose=False, n_threads=cfg.threads,
                          type_k=GGML_F32, type_v=GGML_F32)
    tokenize_ok = all(llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer.encode(text) for text in TEXTS.values())
    ids = tokenizer.encode(" ".join(TEXTS.values()) * 8)[:min(cfg.tokens, model.config.block_size)]
    llm.eval(ids)
    theirs = np.array(llm.scores[:len(ids)])
    raw = float(np.abs(theirs - our_logits(model, ids, tokenizer.n_vocab)).max())
    same_gelu = float(np.abs(theirs - our_logits(model, ids, tokenizer.n_vocab, llama_cpp_gelu)).max())
    prompt = tokenizer.encode(PROMPT)
    n = min(cfg.tokens, model.config.block_size - len(prompt))
    llm.reset()
    their_greedy = [t for _, t in zip(range(n), llm.generate(prompt, temp=0.0, top_k=1, reset=True))]
    our_greedy = list(generate(model, prompt, n, temperature=0, vocab_limit=tokenizer.n_vocab))
    return {"type": gguf_type, "MiB": path.stat().st_size / 2**20, "tokenize": "ok" if tokenize_ok else "DIFFERS", "raw": raw,
            "same_gelu": same_gelu, "scale": float(np.abs(theirs).max()), "greedy": agreeing_prefix(their_greedy, our_greedy), "n": n}


def main():
    cfg = parse_options(GGUFBenchConfig, description=__doc__, positional=None)
    try:
        import llama_cpp
    except ImportError:
        raise UsageError("bench/gguf_parity.py needs llama-cpp-python: CMAKE_ARGS=\"-DGGML_NATIVE=ON\" pip install llama-cpp-python") from None
    types = [t.strip() for t in cfg.types.split(",") if t.strip()]
    bad = [t for t in types if t not in GGUF_TYPES]
    if bad:
        raise UsageError(f"--types names {bad[0]}; choose among {', '.join(GGUF_TYPES)}")
    model, tokenizer = build_model(load_any_checkpoint(cfg.ckpt))
    print(describe_machine("cpu"))
    print(f"checkpoint {cfg.ckpt}: {model.num_params() / 1e6:.2f}M parameters, {tokenizer.kind} tokenizer of {tokenizer.n_vocab} ids; "
          f"llama-cpp-python {llama_cpp.__version__}")
    print(f"{'type':>5} {'MiB':>7} {'tokenize':>9} {'max |logit diff|':>17} {'same GELU':>10} {'logits up to':>13} {'greedy agree':>13}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for gguf_type in types:
            r = measure(llama_cpp, model, tokenizer, gguf_type, cfg, folder)
            rows.append(r)
            print(f"{r['type']:>5} {r['MiB']:7.1f} {r['tokenize']:>9} {r['raw']:17.2e} {r['same_gelu']:10.2e} {r['scale']:13.1f} "
                  f"{r['greedy']:>6}/{r['n']}", flush=True)
    print(f"reproduce: {reproduce_command('bench/gguf_parity.py', cfg, always=('ckpt',))}")
    first = rows[0]
    print(f"gguf_parity: {first['type']}_logit_diff={first['raw']:.2e} {first['type']}_same_gelu={first['same_gelu']:.2e} "
          f"tokenize={'ok' if all(r['tokenize'] == 'ok' for r in rows) else 'differs'} greedy_{first['type']}={first['greedy']}/{first['n']}")


if __name__ == "__main__":
    run_cli(main)
