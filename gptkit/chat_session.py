"""A conversation with a model: its messages, the KV cache that holds them, and the replies.

chat.py is the terminal front end over ChatSession; train.py and bench/chat_accuracy.py measure chat accuracy
through the same class, so what they measure is what the REPL does.
"""
from dataclasses import replace

import torch

from gptkit.chat_template import drop_oldest_turns, prompt_for_reply, reply_stop_ids
from gptkit.engine import Engine, SamplingOptions, Timer, sampling_kwargs, stop_strings, stream_text
from gptkit.errors import UsageError

CHAT_TEMPERATURE = 0.3  # chat.py's default: lower than a completion's, so replies stay on the conversation

class ChatSession:
    """Messages as {"role", "content", "ids"} (ids: the content's tokens, as generated or encoded).

    Every reply renders the whole conversation; the Engine prefills only what its cache does not hold yet, so a new
    turn costs its own tokens and an edit (/undo, /retry, /system) costs only what follows it.
    """

    def __init__(self, model, tokenizer, options=None, system_prompt=""):
        self.tokenizer, self.options = tokenizer, options or SamplingOptions()
        self.engine = Engine(model, vocab_limit=tokenizer.n_vocab)
        self.block_size = model.config.block_size
        self.stop_ids = set(reply_stop_ids(tokenizer))
        self.messages = []
        self.dropped_turns = 0  # turns dropped so far to fit the context
        self.stats = None  # the last reply's prefill and timing figures
        self._seed, self._generator = None, None
        if system_prompt:
            self.set_system(system_prompt)

    # --- the conversation -------------------------------------------------------------------------------------

    def message(self, role, content, ids=None):
        return {"role": role, "content": content, "ids": self.tokenizer.encode(content) if ids is None else ids}

    def set_system(self, text):
        """Replace (or remove, with empty text) the system prompt."""
        self.messages = [m for m in self.messages if m["role"] != "system"]
        if text:
            self.messages.insert(0, self.message("system", text))

    def reset(self):
        """Forget the conversation, keep the system prompt."""
        self.messages = [m for m in self.messages if m["role"] == "system"]

    def undo(self):
        """Remove the last user message and the reply to it; False when there is none."""
        last_user = max((i for i, m in enumerate(self.messages) if m["role"] == "user"), default=None)
        if last_user is None:
            return False
        del self.messages[last_user:]
        return True

    def load(self, messages):
        """Replace the conversation by plain {"role", "content"} messages."""
        self.messages = [self.message(m["role"], m["content"]) for m in messages]

    def plain_messages(self):
        return [{"role": m["role"], "content": m["content"]} for m in self.messages]

    def render(self, messages=None):
        """The prompt for the next reply: <|bos|>, every message, then <|assistant_start|>."""
        return prompt_for_reply(self.tokenizer, [(m["role"], m["ids"]) for m in (self.messages if messages is None else messages)])

    def context_used(self):
        return len(self.render())

    # --- replies ----------------------------------------------------------------------------------------------

    def reply_room(self):
        """Tokens kept free for the reply when fitting the history into the context."""
        return max(1, min(self.options.max_new_tokens, self.block_size // 4))

    def fit_context(self, messages):
        """Drop the oldest turns (never the system prompt, never the last message) until the prompt and room for a
        reply fit the context. Returns (messages, turns dropped); raises UsageError when even the last message alone is too long.
        """
        limit = self.block_size - self.reply_room()
        fitted, dropped = drop_oldest_turns(messages, lambda kept: len(self.render(kept)) <= limit, role=lambda m: m["role"])
        if fitted is None:
            alone = len(self.render([m for i, m in enumerate(messages) if i == len(messages) - 1 or (i == 0 and m["role"] == "system")]))
            raise UsageError(f"that message needs {alone} tokens with the system prompt, but the model's context is {self.block_size} "
                             f"tokens with {self.reply_room()} kept for the reply; shorten it")
        return fitted, dropped

    def respond(self, user_text):
        """Add a user message and return the reply's text stream. A message that cannot fit raises UsageError and is not kept."""
        candidate = self.messages + [self.message("user", user_text)]
        self.fit_context(candidate)  # raises before anything changes
        self.messages = candidate
        return self.reply()

    def retry(self):
        """Drop the last reply and return a new one's text stream; None when there is no reply to retry."""
        if not self.messages or self.messages[-1]["role"] != "assistant":
            return None
        self.fit_context(self.messages[:-1])  # raises before anything changes
        self.messages.pop()
        return self.reply()

    def reply(self):
        """Fit the conversation to the context (dropping the oldest turns) and return the assistant reply's text stream.

        The reply is added to the conversation when the stream ends, also when the consumer stops it early (Ctrl-C):
        what was shown is what is kept, as in llama.cpp.
        """
        self.messages, dropped = self.fit_context(self.messages)
        self.dropped_turns += dropped
        return self._stream(self.render(), dropped)

    def _stream(self, prompt, dropped):
        room = self.block_size - len(prompt)
        opts = self.options
        tokens, timer = [], Timer()
        self.stats = {"dropped_turns": dropped, "prompt_tokens": len(prompt)}

        def record(stream):
            for token in stream:
                timer.tick()
                tokens.append(token)
                if token not in self.stop_ids:  # an end-of-turn token is not text
                    yield token

        generated = self.engine.generate(prompt, min(opts.max_new_tokens, room), stop_ids=self.stop_ids,
                                         generator=self.random(), **sampling_kwargs(opts))
        text = ""
        try:
            for piece in stream_text(record(generated), self.tokenizer, stop_strings(opts)):
                text += piece
                yield piece
        finally:
            ended = bool(tokens) and tokens[-1] in self.stop_ids
            content_ids = tokens[:-1] if ended else tokens
            if self.tokenizer.decode(content_ids) != text:  # a stop string cut the text: keep what was shown
                content_ids = self.tokenizer.encode(text)
            self.messages.append(self.message("assistant", text, content_ids))
            self.stats.update(timer.report(), **self.engine.last_prefill)
            self.stats["context_limited"] = not ended and len(tokens) == room and room < opts.max_new_tokens

    def random(self):
        """The session's sampling generator: seeded once from --seed (again when /set seed changes it), so /retry differs."""
        if self._seed != self.options.seed or self._generator is None:
            self._seed = self.options.seed
            self._generator = None
            if self._seed is not None:
                self._generator = torch.Generator(device=self.engine.device)
                self._generator.manual_seed(self._seed)
        return self._generator


def exact_reply(got, expected):
    """Whether a reply is the expected one, whole: only surrounding whitespace may differ, so "Your name is Anna."
    is not "Your name is Ann." and "...is 879." is not "...is 87." (None, a reply that could not be made, never is)."""
    return got is not None and got.strip() == expected.strip()


def reply_accuracy(model, tokenizer, conversations, max_new_tokens=64, labels=None):
    """Exact-match accuracy (exact_reply) of the final assistant message of each conversation, replied to greedily by a ChatSession.

    Returns {"all": (correct, total), LABEL: (correct, total), ...} and a few (prompt, expected, got) examples.
    The labels a conversation counts under are labels(conversation), an iterable of strings; by default its optional "kind".
    """
    session = ChatSession(model, tokenizer, replace(SamplingOptions(), temperature=0.0, repetition_penalty=1.0, max_new_tokens=max_new_tokens))
    labels = labels or (lambda conversation: [conversation.get("kind")])
    counts, examples = {}, []
    for conversation in conversations:
        *context, last = conversation["messages"]
        if last["role"] != "assistant" or not context:
            continue
        session.load(context)
        try:
            got = "".join(session.reply()).strip()
        except UsageError:  # longer than the context: counts as wrong
            got = None
        correct = exact_reply(got, last["content"])
        for key in ("all", *labels(conversation)):
            if key:
                right, total = counts.get(key, (0, 0))
                counts[key] = (right + correct, total + 1)
        if len(examples) < 3 or (not correct and len(examples) < 6):
            examples.append((context[-1]["content"], last["content"], got))
    return counts, examples
