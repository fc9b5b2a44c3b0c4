"""The OpenAI API's shape: requests checked field by field into a Request for the batch engine, and the JSON of
responses, stream chunks and errors, as /v1/chat/completions and /v1/completions speak it.

Every bad request becomes an ApiError (status, message, the field at fault) that the server sends as OpenAI's
error object; nothing a client sends reaches the model unchecked.
"""
import math
import time
import uuid

from gptkit.batching import Request
from gptkit.chat_template import ROLES, drop_oldest_turns, prompt_for_reply, reply_stop_ids

MAX_STOP_STRINGS = 4  # as OpenAI's API
UNSUPPORTED = {"logprobs": (None, False), "tools": (None, []), "functions": (None, []), "response_format": (None, {"type": "text"})}


class ApiError(Exception):
    """A request the server refuses: sent as {"error": {"message", "type", "param", "code"}} with `status`."""

    def __init__(self, status, message, param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self):
        kind = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error"}.get(self.status)
        return {"error": {"message": self.message, "type": kind or ("invalid_request_error" if self.status < 500 else "server_error"),
                          "param": self.param, "code": self.code}}


# --- reading a request ---------------------------------------------------------------------------------------------

def field(body, name, kind, default=None, low=None, high=None, low_open=False):
    """body[name] checked: its JSON type (an int is also a number), and its range; `default` when absent or null."""
    value = body.get(name)
    if value is None:
        return default
    number = kind is float and isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number or (isinstance(value, kind) and not (kind is int and isinstance(value, bool)))):
        names = {float: "a number", int: "an integer", bool: "true or false", str: "a string", list: "a list", dict: "an object"}
        raise ApiError(400, f"'{name}' must be {names[kind]}, not {type(value).__name__} {value!r:.40}", name)
    if number and not math.isfinite(value):
        raise ApiError(400, f"'{name}' must be a finite number", name)
    if low is not None and (value < low or (low_open and value == low)) or high is not None and value > high:
        bound = f"{'above' if low_open else 'at least'} {low}" if high is None else f"in {'(' if low_open else '['}{low}, {high}]"
        raise ApiError(400, f"'{name}' is {value}; it must be {bound}", name)
    return float(value) if number else value


def message_text(content, i):
    """A message's text: a string, or OpenAI's list of parts of which only text parts are allowed."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError(400, f"messages[{i}].content must be a string (or a list of text parts); this model reads only text", f"messages[{i}].content")


def read_messages(body, max_messages):
    messages = field(body, "messages", list)
    if not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    if len(messages) > max_messages:
        raise ApiError(400, f"'messages' has {len(messages)} messages; this server takes at most {max_messages}", "messages")
    read = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object with \"role\" and \"content\"", f"messages[{i}]")
        role = "system" if m.get("role") == "developer" else m.get("role")  # OpenAI's newer name for the system role
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}].role is {m.get('role')!r}; use one of {', '.join(ROLES)}", f"messages[{i}].role")
        if role == "system" and i > 0:
            raise ApiError(400, f"messages[{i}] is a system message; only the first message may be one", f"messages[{i}].role")
        read.append((role, message_text(m.get("content"), i)))
    if read[-1][0] == "assistant":
        raise ApiError(400, "the last message is the assistant's; end with a user message to get a reply", f"messages[{len(read) - 1}]")
    return read


def stop_list(body):
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOP_STRINGS:
        raise ApiError(400, f"'stop' must be a string or a list of at most {MAX_STOP_STRINGS} strings", "stop")
    return tuple(s for s in stops if s)


def check_unsupported(body):
    for name, fine in UNSUPPORTED.items():
        if body.get(name) not in fine:
            raise ApiError(400, f"'{name}' is not supported by this server", name)
    n = field(body, "n", int, 1, low=1)
    if n != 1:
        raise ApiError(400, f"'n' is {n}; this server generates one choice per request (send several requests instead)", "n")


def context_exceeded(prompt_tokens, room, block_size, param, fix, alone=False):
    """The 400 for a prompt that, with room tokens for the reply, does not fit the context: it says by how many tokens."""
    return ApiError(400, f"the prompt is {prompt_tokens} tokens{' even with only the last message' if alone else ''} and the reply may take "
                         f"{room}: {prompt_tokens + room - block_size} more than the model's context of {block_size} tokens; {fix}", param,
                    "context_length_exceeded")


def fit_turns(tokenizer, turns, room, block_size, truncate):
    """The prompt of (role, ids) turns, leaving room tokens for the reply within block_size: when it does not fit, a 400
    saying by how much, or with truncate the oldest turns dropped (never the system prompt, never the last message)."""
    fits = lambda kept: len(prompt_for_reply(tokenizer, kept)) + room <= block_size
    kept, _ = drop_oldest_turns(turns, fits) if truncate else (turns if fits(turns) else None, 0)
    if kept is None:
        if truncate:
            alone = [t for i, t in enumerate(turns) if i == len(turns) - 1 or t[0] == "system"]
            raise context_exceeded(len(prompt_for_reply(tokenizer, alone)), room, block_size, "messages",
                                   "shorten the last message or lower max_tokens", alone=True)
        raise context_exceeded(len(prompt_for_reply(tokenizer, turns)), room, block_size, "messages",
                               "shorten the messages, lower max_tokens, or send \"truncation\": \"auto\" to drop the oldest turns")
    return prompt_for_reply(tokenizer, kept)


def generation_request(body, tokenizer, block_size, limits, chat):
    """(Request, prompt token count, stream, include_usage) from a /v1/chat/completions (chat) or /v1/completions body."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    defaults = limits["defaults"]
    check_unsupported(body)
    stream = field(body, "stream", bool, False)
    options = field(body, "stream_options", dict, {})
    include_usage = field(options, "include_usage", bool, False)
    max_tokens = field(body, "max_completion_tokens", int, None, low=1) or field(body, "max_tokens", int, None, low=1)
    if max_tokens is not None and max_tokens > limits["max_tokens"]:
        raise ApiError(400, f"'max_tokens' is {max_tokens}; this server allows at most {limits['max_tokens']}", "max_tokens")
    truncate = field(body, "truncation", str, "disabled") == "auto"
    room = max_tokens or 1
    if chat:
        turns = [(role, tokenizer.encode(text)) for role, text in read_messages(body, limits["max_messages"])]
        prompt = fit_turns(tokenizer, turns, room, block_size, truncate)
        stop_ids = reply_stop_ids(tokenizer)
    else:
        text = body.get("prompt")
        if isinstance(text, list) and len(text) == 1:
            text = text[0]
        if not isinstance(text, str) or not text:
            raise ApiError(400, "'prompt' must be a non-empty string", "prompt")
        prompt = tokenizer.encode(text)
        keep = block_size - room  # the prompt tokens that fit beside the reply
        if len(prompt) > keep:
            if not truncate or keep < 1:  # (keep < 1: no prompt at all would fit, and prompt[-0:] would keep all of it)
                raise context_exceeded(len(prompt), room, block_size, "prompt", "shorten the prompt or lower max_tokens")
            prompt = prompt[-keep:]  # keep the end, nearest the continuation
        stop_ids = (tokenizer.eot_id,)
    if field(body, "ignore_eos", bool, False):  # llama.cpp's and vLLM's extra: generate max_tokens whatever comes (benchmarks)
        stop_ids = ()
    request = Request(
        prompt_ids=prompt, max_tokens=max_tokens or block_size - len(prompt),
        temperature=field(body, "temperature", float, defaults["temperature"], low=0, high=2),
        top_p=field(body, "top_p", float, 1.0, low=0, high=1, low_open=True), top_k=field(body, "top_k", int, defaults["top_k"], low=0) or None,
        min_p=field(body, "min_p", float, 0.0, low=0, high=1),
        repetition_penalty=field(body, "repetition_penalty", float, 1.0, low=0, low_open=True),
        seed=field(body, "seed", int, None), stop_ids=stop_ids, stop_strings=stop_list(body))
    return request, len(prompt), stream, include_usage


# --- writing responses ---------------------------------------------------------------------------------------------

def new_id(chat):
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens, request):
    return {"prompt_tokens": prompt_tokens, "completion_tokens": len(request.tokens), "total_tokens": prompt_tokens + len(request.tokens)}


def completion(chat, rid, model, request, prompt_tokens):
    """The whole response of a request that has finished."""
    choice = {"index": 0, "finish_reason": request.finish_reason, "logprobs": None}
    choice.update({"message": {"role": "assistant", "content": request.text}} if chat else {"text": request.text})
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage(prompt_tokens, request)}


def chunk(chat, rid, model, text=None, finish_reason=None, role=False, usage_of=None):
    """One streamed chunk: a piece of text, the role that opens a chat reply, the finish reason, or (no choices) the usage."""
    base = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()), "model": model}
    if usage_of is not None:
        return {**base, "choices": [], "usage": usage_of}
    if chat:
        delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
    return {**base, "choices": [choice]}
