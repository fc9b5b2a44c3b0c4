"""Batched decoding for many conversations at once: one forward per step for every running sequence.

At batch 1 a CPU decode step costs about one read of the weights plus Python's per-operation overhead, so several
sequences in one step cost little more than one. Each sequence lives in a row (a slot) of one KV cache at its own
position. A new request is prefilled alone into a free row, reusing whatever prefix of its prompt that row still holds
from an earlier turn (a chat sends its whole history every time), then joins the batch; a finished or cancelled one
leaves it and its row keeps its tokens for the next turn. Running rows are kept first, so a step runs on a slice.
"""
import itertools
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.engine import StopText, penalize_repetition, sample_next
from gptkit.model import KVCache
from gptkit.precision import replace_linears

SMALL_BATCH = 16  # rows up to which SmallBatchLinear multiplies weight-first


@dataclass
class Request:
    """One generation: the prompt's tokens, how to sample, when to stop; filled in as it runs."""
    prompt_ids: list
    max_tokens: int
    temperature: float = 1.0
    top_k: int = None
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repetition_window: int = 64
    seed: int = None
    stop_ids: tuple = ()
    stop_strings: tuple = ()
    on_text: object = None  # called with each new piece of text (from the engine's thread)
    on_done: object = None  # called once, when it has finished
    # filled in while it runs
    tokens: list = field(default_factory=list)
    text: str = ""
    finish_reason: str = None  # "stop" or "length" when done; "cancelled" when cancel() came first
    cancelled: bool = False
    error: str = None  # what went wrong, when generation itself failed
    reused: int = 0  # prompt tokens whose keys and values were already in the cache
    stop_id: int = None  # the stop token that ended it (not in tokens), when one did

    def cancel(self):
        """Ask for it to stop (a client that went away); the engine frees its row at its next step."""
        self.cancelled = True

    def finish(self, reason):
        self.finish_reason = reason
        if self.on_done is not None:
            self.on_done()

    @property
    def done(self):
        return self.finish_reason is not None


def plain_greedy(request):
    """Whether the request's next token is simply its most likely one (nothing in its sampling changes the logits)."""
    return request.temperature == 0 and (request.repetition_penalty == 1.0 or not request.repetition_window)


class SmallBatchLinear(nn.Module):
    """A float32 linear layer for decode steps of a few rows on a CPU: W @ x^T rather than x @ W^T. MKL's matrix product
    repacks its right operand on every call, which for 2 to 16 rows costs more than the product itself (the weight is
    read twice); with the weight on the left it streams once: 2x faster at 4 rows for GPT-2 small's shapes here."""

    def __init__(self, linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias  # shared with the model (a tied output layer stays tied)
        self.weight.data = self.weight.data.contiguous()  # row-major, undoing precision.transposed_linears

    def forward(self, x):
        rows = x.shape[:-1].numel()
        if not 1 < rows <= SMALL_BATCH or x.device.type != "cpu" or x.dtype != torch.float32:
            return F.linear(x, self.weight, self.bias)
        y = torch.mm(self.weight, x.reshape(rows, -1).t()).t()
        y = y if self.bias is None else y + self.bias
        return y.reshape(*x.shape[:-1], -1)


def small_batch_linears(module):
    """Replace every nn.Linear under `module` with a SmallBatchLinear, in place (for a model that serves batches)."""
    return replace_linears(module, SmallBatchLinear)


class Slot:
    """A row of the cache: the tokens whose keys and values it holds, and the request running in it (if any)."""

    def __init__(self):
        self.ids, self.request, self.last_used = [], None, 0
        self.next_token = None  # sampled but not yet run through the model
        self.generator = self.stopper = None


class BatchEngine:
    """Runs requests together: admit() prefills one into a free row, step() decodes one token for every running row."""

    def __init__(self, model, tokenizer, max_batch=8):
        param = next(model.parameters())
        self.model, self.tokenizer, self.device = model, tokenizer, param.device
        self.block_size, self.vocab_limit = model.config.block_size, tokenizer.n_vocab  # rows past the tokenizer's are padding
        self.cache = KVCache(model.config, max_batch, self.block_size, param.device, dtype=param.dtype, rings=False)
        self.slots = [Slot() for _ in range(max_batch)]
        self.running = 0  # rows [0, running) hold the running requests
        self.clock = itertools.count(1)

    @property
    def free_rows(self):
        return len(self.slots) - self.running

    def admit(self, request):
        """Prefill `request` into a free row and sample its first token; it then runs with the others. Needs a free row."""
        if not self.free_rows:
            raise RuntimeError("no free row: step() until a request finishes")
        if not request.prompt_ids or len(request.prompt_ids) >= self.block_size:
            raise ValueError(f"a prompt needs 1 to {self.block_size - 1} tokens, not {len(request.prompt_ids)}")
        row, reused = self._best_free_row(request.prompt_ids)
        self._swap(row, self.running)
        row, slot = self.running, self.slots[self.running]
        view = self.cache.rows(slice(row, row + 1), reused)
        try:
            with torch.no_grad():
                logits = self.model(torch.tensor([request.prompt_ids[reused:]], device=self.device), kv_cache=view, last_only=True)[:, -1, :]
        except BaseException:
            slot.ids = []  # what the row holds is unknown now; the request never joined the batch
            raise
        self.running += 1  # joins only once its prefill has worked
        slot.request, slot.last_used, slot.ids = request, next(self.clock), list(request.prompt_ids)
        slot.stopper = StopText(self.tokenizer, request.stop_strings)
        slot.generator = torch.Generator(device=self.device)
        if request.seed is None:
            slot.generator.seed()  # a fresh random seed, leaving torch's global generator alone
        else:
            slot.generator.manual_seed(request.seed)
        request.reused = reused
        self._take(row, logits)

    def cancel_all(self):
        """Finish every running request as cancelled, without running the model (after it has failed)."""
        for row in reversed(range(self.running)):
            self._finish(row, "cancelled")

    def step(self):
        """One token for every running request (those that finished or were cancelled leave first); returns how many ran."""
        for row in reversed(range(self.running)):
            if self.slots[row].request.cancelled or self.slots[row].request.done:
                self._finish(row, self.slots[row].request.finish_reason or "cancelled")
        n = self.running
        if not n:
            return 0
        rows = self.slots[:n]
        tokens = torch.tensor([[slot.next_token] for slot in rows], device=self.device)
        pos = torch.tensor([len(slot.ids) for slot in rows], device=self.device)
        with torch.no_grad():
            logits = self.model(tokens, kv_cache=self.cache.rows(slice(0, n), pos))[:, -1, :]
        for slot in rows:
            slot.ids.append(slot.next_token)
        # Greedy rows (the usual API request at temperature 0) take their tokens from one argmax over the batch
        plain = [plain_greedy(slot.request) for slot in rows]
        greedy = logits[:, :self.vocab_limit].argmax(dim=-1).tolist() if any(plain) else None
        for row in reversed(range(n)):  # reversed: _take may finish a row, which swaps it with the last running one
            self._take(row, logits[row:row + 1], greedy[row] if plain[row] else None)
        return n

    def _take(self, row, logits, token=None):
        """Sample the row's next token from its logits (1, V), unless `token` is given, and hand its text to the
        request; finish it if it is done."""
        slot = self.slots[row]
        r = slot.request
        if token is None:
            token = self._sample(slot, logits)
        slot.next_token = token
        if token in r.stop_ids:
            r.stop_id = token
            return self._finish(row, "stop")
        r.tokens.append(token)
        piece = slot.stopper.feed(token)
        self._emit(r, piece)
        if slot.stopper.stopped:
            return self._finish(row, "stop")
        if len(r.tokens) >= r.max_tokens or len(slot.ids) + 1 >= self.block_size:
            self._finish(row, "length")

    def _sample(self, slot, logits):
        r = slot.request
        logits = logits.clone()
        logits[:, self.vocab_limit:] = float("-inf")
        if r.repetition_window:
            logits = penalize_repetition(logits, slot.ids[-r.repetition_window:], r.repetition_penalty)
        return sample_next(logits, r.temperature, r.top_k, slot.generator, r.top_p, r.min_p).item()

    def _emit(self, request, piece):
        if piece:
            request.text += piece
            if request.on_text is not None:
                request.on_text(piece)

    def _finish(self, row, reason):
        slot = self.slots[row]
        r = slot.request
        if reason != "cancelled" and not slot.stopper.stopped:
            self._emit(r, slot.stopper.flush())
        slot.request, slot.next_token = None, None
        self.running -= 1
        self._swap(row, self.running)  # keep the running rows first
        r.finish(reason)

    def _best_free_row(self, prompt_ids):
        """The free row holding the longest prefix of the prompt (the last prompt token always runs, for its logits),
        else the one least recently used; with the number of tokens it already holds."""
        def shared(slot):
            n = 0
            for a, b in zip(slot.ids, prompt_ids[:-1]):
                if a != b:
                    break
                n += 1
            return n
        free = range(self.running, len(self.slots))
        row = max(free, key=lambda r: (shared(self.slots[r]), -self.slots[r].last_used))
        return row, shared(self.slots[row])

    def _swap(self, a, b):
        if a != b:
            self.cache.swap_rows(a, b)
            self.slots[a], self.slots[b] = self.slots[b], self.slots[a]
