"""The one generation routine, shared by sample.py and chat.py: prefill the prompt into a KV cache, then decode one token at a time."""
import codecs

import torch

from model import KVCache


@torch.no_grad()
def prefill(model, ids, cache):
    """Run new tokens (B, T) through the model, filling the cache; return the last position's logits (B, V)."""
    return model(ids, kv_cache=cache)[:, -1, :]


@torch.no_grad()
def decode_step(model, token, cache):
    """One token (B, 1) in, the next logits (B, V) out."""
    return model(token, kv_cache=cache)[:, -1, :]


def sample_next(logits, temperature=1.0, top_k=None, generator=None):
    """Pick the next token from logits (B, V): greedy when temperature is 0, else softmax over the top_k."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)


@torch.no_grad()
def generate(model, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, seed=None, stop_ids=(), vocab_limit=None):
    """Yield up to max_new_tokens new token ids after prompt_ids (a list), stopping after any of stop_ids.

    When the context window fills up, the older half is dropped and the rest re-prefilled, so generation can run
    past block_size. vocab_limit masks the padding ids beyond the tokenizer's vocabulary.
    """
    device = next(model.parameters()).device
    block_size = model.config.block_size
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    history = list(prompt_ids)[-block_size:]
    if not history:
        raise ValueError("generation needs at least one prompt token")
    cache = KVCache(model.config, 1, block_size, device, dtype=next(model.parameters()).dtype)
    logits = prefill(model, torch.tensor([history], device=device), cache)
    for _ in range(max_new_tokens):
        if vocab_limit is not None:
            logits[:, vocab_limit:] = float("-inf")
        token = sample_next(logits, temperature, top_k, generator)
        token_id = token.item()
        yield token_id
        if token_id in stop_ids:
            return
        history.append(token_id)
        if cache.pos == block_size:  # context full: keep the newer half and go on
            history = history[-(block_size // 2):]
            cache.pos = 0
            logits = prefill(model, torch.tensor([history], device=device), cache)
        else:
            logits = decode_step(model, token, cache)


class TextStream:
    """Turns token ids into printable text as they arrive, never splitting a multi-byte UTF-8 character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id):
        return self.decoder.decode(self.tokenizer.decode_bytes([token_id]))

    def flush(self):
        return self.decoder.decode(b"", final=True)
