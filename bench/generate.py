"""Generation speed at batch 1: python bench/generate.py [--compile=true] [--size=gpt2] [--key=value ...]

A gpt2-preset model (GPT-2 small by default) with random weights, seeded: speed does not depend on the weights.
- Ours: greedy generation through generate.py's Engine, the routine sample.py and chat.py use, in each precision of
  --dtypes (precision.py; auto is what sample.py and chat.py pick on this machine). Time to first token for a
  --prompt_tokens prompt (prefill and the first token), and decode tokens/s over --new_tokens tokens; eager, and with
  --compile=true also with the one-token decode step compiled (Engine(compile=True)).
- transformers, when installed: GPT2LMHeadModel with the same weights through model.generate, in each of --hf_dtypes,
  the same figures; whether it picks the same greedy tokens as ours at the same precision; the speed ratios ours /
  transformers at the same precision, and of each side's fastest.
- llama.cpp, when llama-cpp-python is installed: the same weights exported to GGUF in each of --llamacpp_types, the same
  prompts as token ids, greedy through Llama.generate with as many threads as ours; the same figures.
- Chat: a ChatSession in --chat_dtype with a --chat_context context fed --chat_turns user turns of --turn_tokens
  tokens (bytes tokenizer), short greedy replies: time to first token at the first and the last turn, whose history
  the KV cache already holds, against the last turn's with the whole history prefilled afresh.
Each figure is the median of --repeats runs (distinct random prompts) after a warm-up run. The last line compares each
side's fastest decode: `decode_vs_llamacpp: ours=... llamacpp=... ratio=... ours_dtype=... llamacpp_type=...`.
"""
import copy
import random
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch

from gptkit.chat_session import ChatSession
from gptkit.chat_timing import chat_conversation
from gptkit.devices import pick_device
from gptkit.engine import Engine, SamplingOptions, Timer
from gptkit.errors import UsageError, first_line, run_cli
from gptkit.gguf_export import GGUF_TYPES
from gptkit.hf import MASK_BUFFER, hf_config, to_hf_state
from gptkit.llamacpp_timing import INSTALL_HINT, load, time_llamacpp
from gptkit.machine import describe_machine, reproduce_command, sync
from gptkit.model import GPT, GPT2_SIZES, GPTConfig
from gptkit.options import check_rules, option, parse_options
from gptkit.precision import DTYPES, for_generation, linear_shapes, resolve_dtype
from gptkit.tokenizer import byte_tokenizer

GPT2_CONTEXT = 1024
HF_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class BenchConfig:
    size: str = option("gpt2", "GPT-2 size of the model", tuple(GPT2_SIZES))
    n_layer: int = option(0, "override the size's number of layers (0: the size's)")
    n_head: int = option(0, "override the size's number of heads (0: the size's)")
    n_embd: int = option(0, "override the size's width (0: the size's)")
    vocab_size: int = option(50257, "vocabulary size (GPT-2's 50,257 by default)")
    prompt_tokens: int = option(128, "prompt length in tokens")
    new_tokens: int = option(128, "greedy tokens generated after the prompt")
    compile: bool = option(False, "also measure our decoding with the one-token decode step compiled (torch.compile)")
    transformers: bool = option(True, "also measure transformers' GPT2LMHeadModel on the same weights, when it is installed")
    llamacpp: bool = option(True, "also measure llama.cpp (llama-cpp-python) on a GGUF of the same weights, when it is installed")
    llamacpp_types: list[str] = option(["f32", "f16", "bf16"], "llama.cpp's GGUF types (q8_0: 8-bit weights and activations)", GGUF_TYPES)
    chat_turns: int = option(10, "user turns of the chat measurement (0: skip it)")
    turn_tokens: int = option(150, "tokens per user turn of the chat measurement")
    reply_tokens: int = option(8, "tokens per reply of the chat measurement")
    chat_context: int = option(2048, "context length of the chat measurement's model")
    repeats: int = option(3, "runs of each measurement; the median is reported")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    dtypes: list[str] = option(["float32", "mixed", "int8", "auto"], "our precisions (auto: what sample.py and chat.py use here)", DTYPES)
    hf_dtypes: list[str] = option(["float32", "bfloat16"], "transformers' precisions", HF_DTYPES)
    chat_dtype: str = option("auto", "our precision in the chat measurement", DTYPES)
    threads: int = option(0, "CPU threads for torch (0: torch's default)")
    seed: int = option(1337, "seed of the random weights and prompts")


# --- the measurements -------------------------------------------------------------------------------------------

def model_config(cfg, block_size):
    n_layer, n_head, n_embd = GPT2_SIZES[cfg.size]
    try:
        return GPTConfig.from_preset("gpt2", n_layer=cfg.n_layer or n_layer, n_head=cfg.n_head or n_head, n_embd=cfg.n_embd or n_embd,
                                     block_size=block_size, vocab_size=cfg.vocab_size)
    except ValueError as e:
        raise UsageError(str(e)) from None


def random_model(config, seed, device):
    """A float32 model with seeded random weights (for_generation then sets the precision)."""
    torch.manual_seed(seed)
    return GPT(config).to(device).eval()


def time_ours(engine, prompt, new_tokens):
    """(greedy tokens, time to first token, decode tokens/s) of Engine.generate, as sample.py runs it.

    The clock stops at the last token: generate() would run one more decode step if asked for the next one.
    """
    tokens, timer = [], Timer()
    stream = engine.generate(prompt, new_tokens, temperature=0)
    for token in stream:
        timer.tick()
        tokens.append(token)
        if len(tokens) == new_tokens:
            break
    figures = timer.report()
    stream.close()
    if engine.last_prefill["reused"]:
        raise RuntimeError("the prompt reused the cache of an earlier one: prompts must differ from their first token")
    return tokens, figures["ttft_s"], figures["decode_tokens_per_s"]


def transformers_twin(model, eot_id=50256):
    """transformers' GPT2LMHeadModel with the weights of our gpt2-preset `model` (hf.to_hf_state), on its device and dtype."""
    from transformers import GPT2Config, GPT2LMHeadModel

    eot_id = min(eot_id, model.config.vocab_size - 1)
    twin = GPT2LMHeadModel(GPT2Config(**hf_config(model.config, eot_id)))
    result = twin.load_state_dict(to_hf_state(model), strict=False)
    tied = twin.lm_head.weight is twin.transformer.wte.weight
    missing = [k for k in result.missing_keys if not (MASK_BUFFER.fullmatch(k.removeprefix("transformer.")) or (k == "lm_head.weight" and tied))]
    if missing or result.unexpected_keys:  # only GPT-2's constant attention-mask buffers (and a tied lm_head) may be left out
        raise RuntimeError(f"GPT2LMHeadModel did not take our weights: missing {missing}, unexpected {result.unexpected_keys}")
    param = next(model.parameters())
    return twin.to(device=param.device, dtype=param.dtype).eval()


@torch.no_grad()
def transformers_greedy(twin, prompt, new_tokens):
    """Exactly new_tokens greedy tokens after prompt from model.generate."""
    ids = torch.tensor([prompt], device=twin.device)
    out = twin.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                        pad_token_id=twin.config.eos_token_id)
    return out[0, len(prompt):].tolist()


def time_transformers(twin, prompt, new_tokens, device):
    """(greedy tokens, time to first token, decode tokens/s): the first token's time is generate's with max_new_tokens=1."""
    sync(device)
    started = time.perf_counter()
    transformers_greedy(twin, prompt, 1)
    sync(device)
    ttft = time.perf_counter() - started
    started = time.perf_counter()
    tokens = transformers_greedy(twin, prompt, new_tokens)
    sync(device)
    decode_s = time.perf_counter() - started - ttft
    return tokens, ttft, (new_tokens - 1) / decode_s if new_tokens > 1 and decode_s > 0 else 0.0


def random_prompts(n, length, vocab_size, seed):
    """n random prompts whose first tokens differ, so that an Engine reuses nothing of the one before."""
    generator = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, vocab_size, (length,), generator=generator).tolist() for _ in range(n)]
    for i, prompt in enumerate(prompts):
        prompt[0] = i % vocab_size
    return prompts


def measure(run, warmup, prompts, new_tokens):
    """Median (time to first token, decode tokens/s) over the prompts, after a warm-up run; and each prompt's tokens."""
    run(warmup, min(new_tokens, 4))
    results = [run(prompt, new_tokens) for prompt in prompts]
    return statistics.median(r[1] for r in results), statistics.median(r[2] for r in results), [r[0] for r in results]


def first_difference(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def figures_line(ttft, rate):
    return f"time to first token {1000 * ttft:8.1f} ms | decode {rate:7.1f} tokens/s"


def measure_chat(cfg, device, name):
    tokenizer = byte_tokenizer()
    config = model_config(cfg, cfg.chat_context)
    config.vocab_size = max(config.vocab_size, tokenizer.n_vocab)
    model = random_model(config, cfg.seed, device)
    used = for_generation(model, name, device)
    rng = random.Random(cfg.seed)
    "".join(ChatSession(model, tokenizer, SamplingOptions(temperature=0.0, max_new_tokens=2)).respond("warm-up"))
    runs = [chat_conversation(model, tokenizer, cfg, rng) for _ in range(cfg.repeats)]
    first, last, fresh = (statistics.median(run[i]["ttft_s"] for run in runs) for i in range(3))
    counts = runs[-1]
    print(f"chat: ChatSession in {used}, context {cfg.chat_context}, {cfg.chat_turns} user turns of {cfg.turn_tokens} tokens, greedy replies of "
          f"{cfg.reply_tokens} tokens (bytes tokenizer), median of {cfg.repeats} conversations")
    n = cfg.chat_turns
    for label, ttft, stats in (("turn 1", first, counts[0]), (f"turn {n}", last, counts[1]), (f"turn {n}, history re-prefilled", fresh, counts[2])):
        print(f"  {label + ':':<31} time to first token {1000 * ttft:8.1f} ms (prefilled {stats['prefilled']:,}, reused {stats['reused']:,})")
    print(f"  turn {n} / turn 1: {last / first:.2f}x; turn {n} re-prefilled / with the cache: {fresh / last:.1f}x")


def check_config(cfg):
    checks = [("prompt_tokens", cfg.prompt_tokens >= 2, "must be at least 2"),
              ("new_tokens", cfg.new_tokens >= 2, "must be at least 2 (decode speed needs a second token)"),
              ("repeats", cfg.repeats >= 1, "must be at least 1"),
              ("chat_turns", cfg.chat_turns >= 0, "must not be negative"),
              ("turn_tokens", cfg.turn_tokens >= 1, "must be at least 1"),
              ("reply_tokens", cfg.reply_tokens >= 1, "must be at least 1"),
              ("threads", cfg.threads >= 0, "must not be negative"),
              ("dtypes", bool(cfg.dtypes), "must name at least one precision"),
              ("hf_dtypes", bool(cfg.hf_dtypes), "must name at least one precision")]
    check_rules(cfg, checks)
    if cfg.prompt_tokens + cfg.new_tokens > GPT2_CONTEXT:
        raise UsageError(f"--prompt_tokens + --new_tokens = {cfg.prompt_tokens + cfg.new_tokens} is more than GPT-2's context of {GPT2_CONTEXT}")


def measure_ours(model, name, cfg, prompts, device):
    """Our figures in precision `name`, eager and (with --compile) compiled: {label: (ttft, rate, tokens)}."""
    model = copy.deepcopy(model)
    used = for_generation(model, name, device)
    first, warmup, *prompts = prompts  # first: compiles
    results, engine, label = {}, Engine(model), f"ours, {used}"
    results[label] = measure(lambda p, n: time_ours(engine, p, n), warmup, prompts, cfg.new_tokens)
    print(f"{label + ':':<28} {figures_line(*results[label][:2])}", flush=True)
    if cfg.compile:
        engine, label = Engine(model, compile=True), f"ours, {used}, compiled"
        started = time.perf_counter()
        try:
            time_ours(engine, first, 2)  # the first decode step compiles
        except Exception as e:  # a missing C++ compiler, an unsupported backend: a figure we cannot give, not a crash
            print(f"{label + ':':<28} compile: failed ({type(e).__name__}: {first_line(e)})", flush=True)
        else:
            compile_s = time.perf_counter() - started
            results[label] = measure(lambda p, n: time_ours(engine, p, n), warmup, prompts, cfg.new_tokens)
            eager = results[f"ours, {used}"]
            same = "same greedy tokens as eager" if results[label][2] == eager[2] else "greedy tokens DIFFER from eager"
            print(f"{label + ':':<28} {figures_line(*results[label][:2])} | {results[label][1] / eager[1]:.2f}x eager decode | "
                  f"compile {compile_s:.1f} s | {same}", flush=True)
    return results


def measure_transformers(model, name, cfg, prompts, device):
    """transformers' figures in dtype `name` on our model's weights: {label: (ttft, rate, tokens)}."""
    import transformers

    twin = transformers_twin(model).to(getattr(torch, name))
    label = f"transformers, {name}"
    _, warmup, *prompts = prompts  # the same prompts as ours (the first is for compiling)
    results = {label: measure(lambda p, n: time_transformers(twin, p, n, device), warmup, prompts, cfg.new_tokens)}
    print(f"{label + ':':<28} {figures_line(*results[label][:2])} (transformers {transformers.__version__}, GPT2LMHeadModel, "
          f"{twin.config._attn_implementation} attention, model.generate)", flush=True)
    return results


def measure_llamacpp(model, gguf_type, cfg, prompts, folder):
    """llama.cpp's figures on a GGUF of our weights in `gguf_type`: {label: (ttft, rate, tokens)}."""
    import llama_cpp

    llm = load(llama_cpp, model, gguf_type, folder, cfg.prompt_tokens + cfg.new_tokens + 1)
    label = f"llama.cpp, {gguf_type}"
    _, warmup, *prompts = prompts
    results = {label: measure(lambda p, n: time_llamacpp(llm, p, n), warmup, prompts, cfg.new_tokens)}
    llm.close()
    print(f"{label + ':':<28} {figures_line(*results[label][:2])} (llama-cpp-python {llama_cpp.__version__}, Llama.generate)", flush=True)
    return results


def llamacpp_installed():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def decode_vs_llamacpp(results):
    """The last line: each side's fastest decode, and ours / theirs."""
    ours = {k.removeprefix("ours, "): v[1] for k, v in results.items() if k.startswith("ours")}
    theirs = {k.removeprefix("llama.cpp, "): v[1] for k, v in results.items() if k.startswith("llama.cpp")}
    best = max(ours, key=ours.get)
    if not theirs:
        return f"decode_vs_llamacpp: ours={ours[best]:.1f} llamacpp=none ours_dtype={best.replace(', ', '_')} (llama.cpp not measured)"
    their_best = max(theirs, key=theirs.get)
    return (f"decode_vs_llamacpp: ours={ours[best]:.1f} llamacpp={theirs[their_best]:.1f} ratio={ours[best] / theirs[their_best]:.2f} "
            f"ours_dtype={best.replace(', ', '_')} llamacpp_type={their_best}")


def agreement(a, b):
    """Whether two runs' greedy tokens are identical, or where they first differ."""
    diffs = [first_difference(x, y) for x, y in zip(a, b)]
    if all(d is None for d in diffs):
        return f"identical ({len(diffs)} prompt{'s' * (len(diffs) != 1)} x {len(a[0])} tokens)"
    return "DIFFER (" + ", ".join(f"prompt {i + 1} from token {d + 1}" for i, d in enumerate(diffs) if d is not None) + ")"


def compare(results):
    """Same-precision ratios ours / transformers, how our precisions' and llama.cpp's tokens agree with our float32, and
    the fastest of each side against each peer."""
    ours = {k: v for k, v in results.items() if k.startswith("ours")}
    theirs = {k: v for k, v in results.items() if k.startswith("transformers")}
    reference = results.get("ours, float32")
    for label, (ttft, rate, tokens) in ours.items():
        if reference is not None and label != "ours, float32":
            print(f"greedy tokens, {label} vs ours, float32: {agreement(tokens, reference[2])}")
        twin = theirs.get(twin_label(label))
        if twin is not None:
            print(f"{label} vs {twin_label(label)}: decode {rate / twin[1]:.2f}x, time to first token {twin[0] / ttft:.2f}x "
                  f"(higher: ours faster); greedy tokens {agreement(tokens, twin[2])}")
    if reference is not None and "llama.cpp, f32" in results:
        print(f"greedy tokens, llama.cpp, f32 vs ours, float32: {agreement(results['llama.cpp, f32'][2], reference[2])}")
    for peer in ("transformers", "llama.cpp"):
        others = {k: v for k, v in results.items() if k.startswith(peer)}
        if ours and others:
            best_ours = max(ours, key=lambda k: ours[k][1])
            best_theirs = max(others, key=lambda k: others[k][1])
            print(f"fastest decode: {best_ours} {ours[best_ours][1]:.1f} tokens/s vs {best_theirs} {others[best_theirs][1]:.1f}: "
                  f"{ours[best_ours][1] / others[best_theirs][1]:.2f}x; time to first token "
                  f"{others[best_theirs][0] / ours[best_ours][0]:.2f}x (higher: ours faster)")


def twin_label(label):
    """transformers' label at the precision of one of ours."""
    return label.replace("ours", "transformers").removesuffix(", compiled")


def main():
    cfg = parse_options(BenchConfig, description=__doc__, positional=None)
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    model = random_model(model_config(cfg, GPT2_CONTEXT), cfg.seed, device)
    c = model.config
    print(describe_machine(device))
    print(f"model: gpt2 preset, {c.n_layer} layers x {c.n_embd} wide, {c.n_head} heads, context {c.block_size}, vocabulary {c.vocab_size:,}: "
          f"{model.num_params() / 1e6:.2f}M parameters, random weights (seed {cfg.seed}) on {device}")
    print(f"generation: batch 1, prompts of {cfg.prompt_tokens} random tokens, {cfg.new_tokens} greedy tokens, median of {cfg.repeats}", flush=True)
    prompts = random_prompts(cfg.repeats + 2, cfg.prompt_tokens, c.vocab_size, cfg.seed)

    results = {}
    shapes = linear_shapes(model)
    if "auto" in cfg.dtypes:
        print(f"auto: {resolve_dtype('auto', device, shapes)} on this machine for this model (what sample.py and chat.py use)", flush=True)
    for name in dict.fromkeys(resolve_dtype(d, device, shapes) for d in cfg.dtypes):
        results.update(measure_ours(model, name, cfg, prompts, device))
    if cfg.transformers:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("transformers: not installed (pip install -e '.[hf]'), not compared")
        else:
            for name in dict.fromkeys(cfg.hf_dtypes):
                results.update(measure_transformers(model, name, cfg, prompts, device))
    if cfg.llamacpp and not llamacpp_installed():
        print(f"llama.cpp: llama-cpp-python is not installed ({INSTALL_HINT}), not compared")
    elif cfg.llamacpp:
        with tempfile.TemporaryDirectory() as folder:
            for gguf_type in dict.fromkeys(cfg.llamacpp_types):
                results.update(measure_llamacpp(model, gguf_type, cfg, prompts, folder))
    compare(results)
    del model

    if cfg.chat_turns:
        measure_chat(cfg, device, cfg.chat_dtype)
    print(f"reproduce: {reproduce_command('bench/generate.py', cfg, always=('size', 'prompt_tokens', 'new_tokens', 'compile', 'repeats'))}")
    print(decode_vs_llamacpp(results))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_cli(main)
