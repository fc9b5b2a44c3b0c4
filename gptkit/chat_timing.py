"""A timed chat for the benchmarks: a ChatSession fed filler user turns, its time to first token at each turn."""
from gptkit.chat_session import ChatSession
from gptkit.engine import SamplingOptions
from gptkit.errors import UsageError


def user_turn(rng, n_chars):
    """Filler text of n_chars characters (n_chars tokens with the bytes tokenizer)."""
    words = ["the", "model", "reads", "every", "token", "of", "this", "long", "message", "and", "keeps", "its", "keys", "values",
             "in", "a", "cache", "so", "next", "turn", "costs", "only", "new", "text"]
    text = ""
    while len(text) < n_chars:
        text += rng.choice(words) + " "
    return text[:n_chars]


def chat_conversation(model, tokenizer, cfg, rng):
    """Stats of the first and last turns of one conversation, and of the last turn replied to by a fresh session."""
    options = SamplingOptions(temperature=0.0, top_k=None, repetition_penalty=1.0, max_new_tokens=cfg.reply_tokens, seed=cfg.seed)
    session = ChatSession(model, tokenizer, options)
    turns = []
    for _ in range(cfg.chat_turns):
        "".join(session.respond(user_turn(rng, cfg.turn_tokens)))
        if session.stats["dropped_turns"]:
            raise UsageError(f"{cfg.chat_turns} turns of {cfg.turn_tokens} tokens outgrow --chat_context={cfg.chat_context}: "
                             "the oldest turns were dropped; use fewer or shorter turns or a longer context")
        turns.append(dict(session.stats))
    fresh = ChatSession(model, tokenizer, options)
    fresh.messages = [dict(m) for m in session.messages[:-1]]  # the same token ids up to the last user message, nothing cached
    "".join(fresh.reply())
    return turns[0], turns[-1], dict(fresh.stats)
