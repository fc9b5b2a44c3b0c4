"""The one generation routine, shared by sample.py, chat.py and train.py: prefill a prompt into a KV cache, then
decode one token at a time. An Engine remembers which tokens its cache holds, so a prompt that extends them
(the next turn of a chat) prefills only the new tokens.
"""
import codecs
import time
from dataclasses import dataclass, fields
from typing import Optional

import torch

from gptkit.model import KVCache
from gptkit.native_decode import NativeStep
from gptkit.options import check_values, option

# -- sampling options and filters -----------------------------------------------------------------------------------------

@dataclass
class SamplingOptions:
    """How the next token is picked; sample.py and chat.py take these as --key=value (chat.py also as /set KEY VALUE)."""
    temperature: float = option(0.8, "0 picks the most likely token; higher is more random", bounds=">=0")
    top_k: Optional[int] = option(50, "sample only among the k most likely tokens (none: all)", bounds=">=1")
    top_p: float = option(1.0, "sample only from the smallest set of tokens whose probabilities add up to p (1: off)", bounds="(0, 1]")
    min_p: float = option(0.0, "drop tokens less likely than min_p times the most likely one (0: off)", bounds="[0, 1)")
    repetition_penalty: float = option(1.0, "make tokens seen in the last repetition_window tokens less likely (1: off)", bounds=">0")
    repetition_window: int = option(64, "how many recent tokens the repetition penalty looks at", bounds=">=0")
    max_new_tokens: int = option(200, "the most tokens to generate per reply", bounds="[0, 100000000]")
    stop: list[str] = option([], "also stop when the text contains one of these strings (comma-separated; \\n is a newline)")
    seed: Optional[int] = option(1337, "random seed (none: different every run)", bounds="[0, 9223372036854775807]")


def check_sampling(opts):
    """Raise a UsageError naming the first sampling option out of its bounds (for options built in code)."""
    check_values(opts)


def sampling_options(cfg):
    """The SamplingOptions part of a script's config (which extends SamplingOptions)."""
    return SamplingOptions(**{f.name: getattr(cfg, f.name) for f in fields(SamplingOptions)})


def sampling_kwargs(opts):
    """Engine.generate's keyword arguments from SamplingOptions (max_new_tokens and stop strings are the caller's)."""
    return {f.name: getattr(opts, f.name) for f in fields(SamplingOptions) if f.name not in ("max_new_tokens", "stop")}


def stop_strings(opts):
    """The stop strings, with \\n and \\t typed on a command line read as a newline and a tab."""
    return [s.replace("\\n", "\n").replace("\\t", "\t") for s in opts.stop if s]


def penalize_repetition(logits, recent_ids, penalty):
    """CTRL's penalty: divide the positive logits of recently seen tokens by it, multiply the negative ones."""
    if penalty == 1.0 or not recent_ids:
        return logits
    ids = torch.tensor(sorted(set(recent_ids)), device=logits.device)
    seen = logits[:, ids]
    logits[:, ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def sample_next(logits, temperature=1.0, top_k=None, generator=None, top_p=1.0, min_p=0.0):
    """Pick the next token from logits (B, V): greedy when temperature is 0, else sample after the top_k, min_p and top_p filters."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if min_p > 0:
        probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability mass of the more likely tokens
        sorted_probs = sorted_probs.masked_fill(before >= top_p * sorted_probs.sum(dim=-1, keepdim=True), 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)


# -- the engine: one KV cache, prefill, decode ----------------------------------------------------------------------------

class Engine:
    """A model plus one KV cache and the token ids whose keys and values it holds."""

    def __init__(self, model, vocab_limit=None, compile=False):
        self.model, self.vocab_limit = model, vocab_limit
        self.block_size = model.config.block_size
        param = next(model.parameters())
        self.device = param.device
        # compile=True: decode_step runs the model through torch.compile (prefill stays eager, its length varies).
        # The cache position is passed in as an int argument with dynamic=True, so it is symbolic in the graph: one graph
        # serves every position, where reading kv_cache.pos as an attribute would specialise on it and recompile every token.
        # The cache has one spare slot, which keeps the keys read at the last position a strict slice of the buffer
        # (a whole-buffer view would compile a second graph).
        # The first decode step compiles (seconds to minutes); a compiler error surfaces there.
        self.cache = KVCache(model.config, 1, self.block_size + (1 if compile else 0), self.device, dtype=param.dtype)
        self.cached_ids = []
        self.last_prefill = {"reused": 0, "prefilled": 0}
        self._compiled_decode = torch.compile(self._decode_at, dynamic=True) if compile else None
        self.native = None if compile else NativeStep.build(model, self.cache)  # an int8 model's step in one native call

    @torch.no_grad()
    def prefill(self, ids):
        """Make the cache hold exactly `ids` (at most block_size of them) and return the last position's logits (1, V).

        Only the tokens after the longest prefix the cache already holds are run through the model.
        """
        if not ids:
            raise ValueError("generation needs at least one prompt token")
        reused = 0
        for cached, new in zip(self.cached_ids, ids[:-1]):  # the last token always runs, for its logits
            if cached != new:
                break
            reused += 1
        reused = self.cache.rewind(reused)  # everything after the shared prefix is overwritten; 0 if a local layer's ring lost it
        self.cached_ids = self.cached_ids[:reused]  # true even if the forward below is interrupted (Ctrl-C)
        logits = self.model(torch.tensor([ids[reused:]], device=self.device), kv_cache=self.cache, last_only=True)[:, -1, :]
        self.cached_ids = list(ids)
        self.last_prefill = {"reused": reused, "prefilled": len(ids) - reused}
        return logits

    @torch.no_grad()
    def decode_step(self, token_id):
        """One token in, the next logits (1, V) out."""
        if self.native is not None:
            logits = self.native.step(token_id, self.cache.pos)
            self.cache.pos += 1
        elif self._compiled_decode is not None:
            logits = self._compiled_decode(torch.tensor([[token_id]], device=self.device), self.cache.pos)
        else:
            logits = self.model(torch.tensor([[token_id]], device=self.device), kv_cache=self.cache)[:, -1, :]
        self.cached_ids.append(token_id)
        return logits

    def _decode_at(self, idx, pos):
        """The model on one token at cache position `pos` (what compile=True compiles)."""
        self.cache.pos = pos
        return self.model(idx, kv_cache=self.cache)[:, -1, :]

    def generate(self, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, seed=None, stop_ids=(), top_p=1.0, min_p=0.0,
                 repetition_penalty=1.0, repetition_window=64, generator=None):
        """Yield up to max_new_tokens new token ids after prompt_ids, stopping after any of stop_ids.

        Sampling draws from `generator` when given (a chat keeps one across replies), else from a new one seeded with `seed`.

        When the context window fills up, the older half is dropped and the rest re-prefilled, so generation can run
        past block_size (chat.py keeps its replies inside the window instead).
        """
        if generator is None and seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
        history = list(prompt_ids)[-self.block_size:]
        logits = self.prefill(history)
        for _ in range(max_new_tokens):
            if self.vocab_limit is not None:
                logits[:, self.vocab_limit:] = float("-inf")
            if repetition_window:
                logits = penalize_repetition(logits, history[-repetition_window:], repetition_penalty)
            token_id = sample_next(logits, temperature, top_k, generator, top_p, min_p).item()
            yield token_id
            if token_id in stop_ids:
                return
            history.append(token_id)
            if self.cache.pos == self.block_size:  # context full: keep the newer half and go on
                history = history[-(self.block_size // 2):]
                self.cached_ids = []
                logits = self.prefill(history)
            else:
                logits = self.decode_step(token_id)


def generate(model, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, seed=None, stop_ids=(), vocab_limit=None, **sampling):
    """Engine.generate on a fresh cache: the one-off form sample.py and train.py use."""
    yield from Engine(model, vocab_limit).generate(prompt_ids, max_new_tokens, temperature, top_k, seed, stop_ids, **sampling)


# -- beam search ----------------------------------------------------------------------------------------------------------

@torch.no_grad()
def beam_search(model, prompt_ids, beam_size, max_new_tokens, stop_ids=(), vocab_limit=None, length_penalty=1.0):
    """The most likely continuation by beam search: deterministic, scored by log-probability / length**length_penalty.

    All beams share one batched KV cache; after each step the cache rows are reordered to follow the surviving beams.
    A beam ends at a stop token (included in its ids); the search ends when beam_size beams have ended or after
    max_new_tokens. Returns the best continuation's ids.
    """
    block_size = model.config.block_size
    max_new_tokens = min(max_new_tokens, block_size - 1)
    prompt = list(prompt_ids)[-(block_size - max_new_tokens):]
    if not prompt:
        raise ValueError("generation needs at least one prompt token")
    param = next(model.parameters())
    cache = KVCache(model.config, beam_size, block_size, param.device, dtype=param.dtype)
    logits = model(torch.tensor([prompt] * beam_size, device=param.device), kv_cache=cache, last_only=True)[:, -1, :]
    beams = [[] for _ in range(beam_size)]
    scores = torch.zeros(beam_size, device=param.device)
    scores[1:] = float("-inf")  # all rows start identical: expand only the first
    finished = []  # (normalised score, ids)
    for step in range(max_new_tokens):
        if vocab_limit is not None:
            logits[:, vocab_limit:] = float("-inf")
        candidates = (scores[:, None] + torch.log_softmax(logits.float(), dim=-1)).view(-1)
        top_scores, top_index = candidates.topk(2 * beam_size)  # enough that beam_size survive even if some end here
        live = []  # (row it extends, token, score)
        for score, index in zip(top_scores.tolist(), top_index.tolist()):
            row, token = divmod(index, logits.size(-1))
            if score == float("-inf"):  # an idle row's candidate
                continue
            if token in stop_ids:
                finished.append((score / (len(beams[row]) + 1) ** length_penalty, beams[row] + [token]))
            elif len(live) < beam_size:
                live.append((row, token, score))
        if step == max_new_tokens - 1:  # out of room: the live beams compete as they are
            finished += [(score / (len(beams[row]) + 1) ** length_penalty, beams[row] + [token]) for row, token, score in live]
        if len(finished) >= beam_size or not live or step == max_new_tokens - 1:
            break
        rows = torch.tensor([row for row, _, _ in live], device=param.device)
        cache.reorder(rows)  # follow the surviving beams
        beams = [beams[row] + [token] for row, token, _ in live]
        scores = torch.full((beam_size,), float("-inf"), device=param.device)
        scores[:len(live)] = torch.tensor([score for _, _, score in live])
        tokens = [[token] for _, token, _ in live] + [[0]] * (beam_size - len(live))  # idle rows, scored -inf
        beams += [[] for _ in range(beam_size - len(live))]
        logits = model(torch.tensor(tokens, device=param.device), kv_cache=cache)[:, -1, :]
    return max(finished, key=lambda f: f[0])[1] if finished else []


# -- text out -------------------------------------------------------------------------------------------------------------

class TextStream:
    """Turns token ids into printable text as they arrive, never splitting a multi-byte UTF-8 character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id):
        return self.decoder.decode(self.tokenizer.decode_bytes([token_id]))

    def flush(self):
        return self.decoder.decode(b"", final=True)


class StopText:
    """Text of a token stream fed one token at a time, ending before the first stop string (which is never returned).

    Text that could be the start of a stop string is held back until the next tokens settle it.
    """

    def __init__(self, tokenizer, stop_strings=()):
        self.stream, self.stop_strings, self.pending, self.stopped = TextStream(tokenizer), [s for s in stop_strings if s], "", False

    def feed(self, token_id):
        """The text that is now certain; sets .stopped when a stop string has appeared."""
        self.pending += self.stream.feed(token_id)
        hit = min((i for i in (self.pending.find(s) for s in self.stop_strings) if i >= 0), default=-1)
        if hit >= 0:
            self.stopped = True
            text, self.pending = self.pending[:hit], ""
            return text
        hold = max((k for s in self.stop_strings for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        text = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold:]
        return text

    def flush(self):
        """What was held back, once the stream has ended without a stop string."""
        text, self.pending = ("" if self.stopped else self.pending + self.stream.flush()), ""
        return text


def stream_text(tokens, tokenizer, stop_strings=()):
    """Text pieces of a token stream, ending before the first stop string (which is never printed)."""
    stopper = StopText(tokenizer, stop_strings)
    for token in tokens:
        text = stopper.feed(token)
        if text:
            yield text
        if stopper.stopped:
            return
    yield stopper.flush()


class Timer:
    """Time to first token and decode tokens/s of one generation, for --verbose and /stats."""

    def __init__(self):
        self.start = time.perf_counter()
        self.first = None
        self.tokens = 0

    def tick(self):
        self.tokens += 1
        if self.first is None:
            self.first = time.perf_counter()

    def report(self):
        now = time.perf_counter()
        ttft = (self.first or now) - self.start
        decode_s = now - (self.first or now)
        rate = (self.tokens - 1) / decode_s if self.tokens > 1 and decode_s > 0 else 0.0
        return {"ttft_s": ttft, "decode_tokens_per_s": rate, "new_tokens": self.tokens}
