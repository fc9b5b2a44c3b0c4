"""Serving throughput: python bench/serve.py [--ckpt=out_chat] [--clients=1,4,8]

Starts serve.py in its own process on a free local port and, for each number of concurrent clients, has every
client stream --requests chat completions of --max_tokens greedy tokens (each client its own conversation, so no
cache is shared between them), --rounds times in turn. It prints each count's tokens over all rounds, its median
total tokens/s over all clients (and the range over the rounds), time to first token (p50, p95) and whether the
replies equal those of the same requests sent one at a time. The last line is
`serve: clients=4 speedup=S ttft_p50_ms=T`: total tokens/s at 4 clients over 1 client, and the p50 at 4 clients.
The clients run on the same machine as the server, so on a 2-core CPU they take cores from it; the batch engine's own
speedup, measured alone afterwards, is printed too.
"""
import http.client
import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gptkit.errors import UsageError, run_cli
from gptkit.loading import default_chat_checkpoint
from gptkit.machine import describe_machine, reproduce_command
from gptkit.options import option, parse_options
from gptkit.precision import DTYPES
from gptkit.precision import HELP as DTYPE_HELP

REPO = Path(__file__).resolve().parents[1]

QUESTIONS = ["Hello! My name is Ada.", "What is 12 plus 7?", "Please repeat after me: green apples.", "What day comes after Monday?",
             "My favourite colour is teal.", "Hi there, how are you?", "What is 3 plus 4?", "Say: the river is wide."]


@dataclass
class ServeBenchConfig:
    ckpt: str = option("", "the checkpoint to serve (empty: out_chat/, else out/)")
    clients: str = option("1,4,8", "the numbers of concurrent clients to measure, comma-separated")
    requests: int = option(3, "chat completions each client sends, one after another", bounds=">=1")
    rounds: int = option(5, "times the whole set of client counts is measured, in turn; the table has each count's median", bounds=">=1")
    max_tokens: int = option(48, "tokens generated per request (greedy, and no stop: every request generates this many)", bounds=">=1")
    dtype: str = option("auto", DTYPE_HELP, DTYPES)
    threads: int = option(0, "the server's --threads (0: torch's default)", bounds=">=0")
    stream_interval_ms: int = option(20, "the server's --stream_interval_ms (how often a stream sends its new text)", bounds="[0, 1000]")


def stream_chat(port, question, max_tokens):
    """One streamed chat completion: (text, tokens, seconds to the first text, seconds in all).

    The client only collects bytes while the stream runs (noting when the first text chunk arrives) and parses them
    after it ends, like a load generator: its clients share this machine's cores with the server, and should take as
    little of them as they can.
    """
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": question}], "stream": True, "max_tokens": max_tokens,
                       "temperature": 0, "stream_options": {"include_usage": True}, "ignore_eos": True})
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise UsageError(f"the server answered {response.status}: {response.read()[:200]!r}")
    received, first = b"", None
    while piece := response.read1(65536):
        received += piece
        if first is None and b'{"content": ' in received:  # the first chunk with text (the role chunk has {"role": ...})
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    connection.close()
    text, tokens = "", 0
    for line in received.split(b"\n"):
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        tokens = chunk["usage"]["completion_tokens"] if chunk.get("usage") else tokens
        text += "".join(choice["delta"].get("content") or "" for choice in chunk["choices"])
    return text, tokens, first if first is not None else total, total


def run_clients(port, n, cfg):
    """n clients at once, each sending cfg.requests requests in turn: (replies by client, tokens, wall seconds, first-token times)."""
    replies, tokens, ttfts = [[] for _ in range(n)], [0] * n, []
    lock = threading.Lock()

    def client(i):
        for k in range(cfg.requests):
            text, count, first, _ = stream_chat(port, QUESTIONS[(i + k) % len(QUESTIONS)] + f" ({i})", cfg.max_tokens)
            replies[i].append(text)
            tokens[i] += count
            with lock:
                ttfts.append(first)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return replies, sum(tokens), time.perf_counter() - start, ttfts


def start_server(cfg, max_batch):
    """serve.py in its own process, as a user runs it (clients in this process must not share its interpreter's lock)."""
    command = [sys.executable, str(REPO / "serve.py"), f"--ckpt={cfg.ckpt}", "--port=0", f"--max_batch={max_batch}", f"--dtype={cfg.dtype}",
               f"--threads={cfg.threads}", f"--stream_interval_ms={cfg.stream_interval_ms}", "--model_name=bench"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if " at http://" not in line:
        process.kill()
        raise UsageError(f"serve.py did not start: {line.strip() or 'no output'} (run `{' '.join(command[1:])}` to see why)")
    return process, int(line.split(" at http://")[1].split("/")[0].rsplit(":", 1)[1]), line.split(" at http://")[0]


def engine_alone(cfg, counts):
    """Tokens/s of gptkit.batching.BatchEngine run directly with n requests at once: what batching gives without the
    HTTP layer and without client processes sharing this machine's cores."""
    import torch

    from gptkit.batching import BatchEngine, Request, small_batch_linears
    from gptkit.chat_template import prompt_for_reply
    from gptkit.checkpoint import build_model
    from gptkit.loading import load_any_checkpoint
    from gptkit.precision import for_generation

    torch.set_grad_enabled(False)
    model, tokenizer = build_model(load_any_checkpoint(cfg.ckpt))
    for_generation(model, cfg.dtype, "cpu")
    engine = BatchEngine(small_batch_linears(model), tokenizer, max(counts))
    rates = {}
    for n in counts:
        requests = [Request(prompt_for_reply(tokenizer, [("user", tokenizer.encode(QUESTIONS[i % len(QUESTIONS)] + f" ({i})"))]), cfg.max_tokens,
                            temperature=0) for i in range(n)]
        start = time.perf_counter()
        for request in requests:
            engine.admit(request)
        while engine.running:
            engine.step()
        rates[n] = sum(len(r.tokens) for r in requests) / (time.perf_counter() - start)
    return rates


def main():
    cfg = parse_options(ServeBenchConfig, description=__doc__, positional=None)
    counts = [int(c) for c in cfg.clients.split(",") if c.strip()]
    if not counts or min(counts) < 1:
        raise UsageError("--clients needs numbers of at least 1, e.g. --clients=1,4,8")
    cfg.ckpt = default_chat_checkpoint(cfg.ckpt)
    process, port, banner = start_server(cfg, max(counts))
    print(describe_machine("cpu"))
    print(f"{banner.replace('serving bench', f'serving {cfg.ckpt}')}; {cfg.requests} requests per client of {cfg.max_tokens} greedy tokens")
    rates, ttfts, totals, same = {n: [] for n in counts}, {n: [] for n in counts}, dict.fromkeys(counts, 0), {}
    try:
        stream_chat(port, "warm up", 4)
        for _ in range(cfg.rounds):  # in turn, so that a machine getting faster or slower over the run affects every count alike
            for n in counts:
                replies, tokens, seconds, times = run_clients(port, n, cfg)
                rates[n].append(tokens / seconds)
                totals[n] += tokens
                ttfts[n] += times
                if n not in same:  # the replies must equal those of the same requests sent one at a time
                    same[n] = replies == [[stream_chat(port, QUESTIONS[(i + k) % len(QUESTIONS)] + f" ({i})", cfg.max_tokens)[0]
                                           for k in range(cfg.requests)] for i in range(n)]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    rate, p50 = {n: statistics.median(r) for n, r in rates.items()}, {n: statistics.median(t) for n, t in ttfts.items()}
    print(f"{'clients':>7} {'tokens':>7} {'tokens/s (median)':>17} {'range':>13} {'vs 1':>6} {'TTFT p50':>9} {'TTFT p95':>9} {'same as alone':>14}")
    for n in counts:
        p95 = sorted(ttfts[n])[round(0.95 * (len(ttfts[n]) - 1))]
        print(f"{n:>7} {totals[n]:>7} {rate[n]:17.1f} {min(rates[n]):6.0f}-{max(rates[n]):<6.0f} {rate[n] / rate[counts[0]]:5.2f}x {1000 * p50[n]:7.0f}ms "
              f"{1000 * p95:7.0f}ms {'yes' if same[n] else 'NO':>14}", flush=True)
    print("the batch engine alone (this process, no HTTP, no clients beside it; the same requests):")
    engine_rates = engine_alone(cfg, counts)
    print("  " + ", ".join(f"{n} at once: {r:.1f} tokens/s ({r / engine_rates[counts[0]]:.2f}x)" for n, r in engine_rates.items()))
    print(f"reproduce: {reproduce_command('bench/serve.py', cfg, always=('clients',))}")
    if 1 in counts and 4 in counts:
        print(f"serve: clients=4 speedup={rate[4] / rate[1]:.2f} ttft_p50_ms={1000 * p50[4]:.0f}")


if __name__ == "__main__":
    run_cli(main)
