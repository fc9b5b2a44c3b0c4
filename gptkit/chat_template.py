"""Conversations: the chat template, loss masks, and reading `messages` from JSONL files or Hugging Face datasets.

A conversation is rendered from the special tokens every tokenizer reserves:

    <|bos|> <|system_start|> ... <|system_end|> <|user_start|> ... <|user_end|> <|assistant_start|> ... <|assistant_end|> ...

Each message is encoded on its own, so the tokens of a conversation are the tokens of its first messages followed by
those of the next one: chat.py relies on that to keep its KV cache across turns.
"""

from gptkit.errors import UsageError
from gptkit.files import read_jsonl_text
from gptkit.sources import dataset_documents, jsonl_records

ROLES = ("system", "user", "assistant")

# The same template for other runtimes, which read the text and find the special tokens in it (a message's text is
# tokenized apart from the tokens around it, as here). Jinja: Hugging Face's and llama.cpp's tokenizer.chat_template.
JINJA_TEMPLATE = (
    "{{ '<|bos|>' }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('gptkit models know the roles system, user and assistant, not ' + message['role']) }}{% endif %}"
    "{{ '<|' + message['role'] + '_start|>' + message['content'] + '<|' + message['role'] + '_end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant_start|>' }}{% endif %}"
)
# Ollama's Go template (a Modelfile's TEMPLATE): it always ends by asking for the assistant's reply.
OLLAMA_TEMPLATE = "<|bos|>{{ range .Messages }}<|{{ .Role }}_start|>{{ .Content }}<|{{ .Role }}_end|>{{ end }}<|assistant_start|>"


def message_ids(tokenizer, role, content_ids):
    """One message's tokens and loss mask: the assistant learns its own words and its end-of-turn token, nothing else."""
    start, end = tokenizer.special_id(f"<|{role}_start|>"), tokenizer.special_id(f"<|{role}_end|>")
    ids = [start, *content_ids, end]
    learn = 1 if role == "assistant" else 0
    return ids, [0] + [learn] * (len(ids) - 1)


def render_turns(tokenizer, turns):
    """Token ids and loss mask of (role, content token ids) turns: the one definition of the template."""
    ids, mask = [tokenizer.special_id("<|bos|>")], [0]
    for role, content_ids in turns:
        message_tokens, message_mask = message_ids(tokenizer, role, content_ids)
        ids += message_tokens
        mask += message_mask
    return ids, mask


def prompt_for_reply(tokenizer, turns):
    """The tokens that ask the model for the next assistant reply: the turns, then <|assistant_start|>."""
    return render_turns(tokenizer, turns)[0] + [tokenizer.special_id("<|assistant_start|>")]


def encoded_turns(tokenizer, messages):
    """(role, content token ids) of {"role", "content"} messages, each encoded on its own."""
    return [(m["role"], tokenizer.encode(m["content"])) for m in messages]


def messages_prompt(tokenizer, messages):
    """The tokens that ask for the assistant's reply to {"role", "content"} messages."""
    return prompt_for_reply(tokenizer, encoded_turns(tokenizer, messages))


def drop_oldest_turns(turns, fits, role=lambda turn: turn[0]):
    """Drop the oldest turns until fits(turns): a user message and the reply after it at a time, never a first system
    message and never the last message. Returns (turns, number dropped), or (None, number dropped) when even the
    system message and the last one alone do not fit. `role` reads a turn's role (turns are (role, ...) by default)."""
    turns, dropped = list(turns), 0
    while not fits(turns):
        first = 1 if role(turns[0]) == "system" else 0
        if first >= len(turns) - 1:
            return None, dropped
        del turns[first]
        if first < len(turns) - 1 and role(turns[first]) == "assistant":
            del turns[first]
        dropped += 1
    return turns, dropped


def reply_stop_ids(tokenizer):
    """The tokens that end an assistant reply: its end-of-turn, the end of text, or the start of a user turn it began itself."""
    return (tokenizer.special_id("<|assistant_end|>"), tokenizer.eot_id, tokenizer.special_id("<|user_start|>"))


def render_conversation(tokenizer, messages):
    """Token ids and a loss mask (1 only on the assistant's tokens, its <|assistant_end|> included)."""
    check_messages(messages)
    return render_turns(tokenizer, encoded_turns(tokenizer, messages))


def check_messages(messages, where="conversation"):
    """Raise a UsageError saying what is wrong unless messages is a list of {role, content} with a system turn only first."""
    if not isinstance(messages, list) or not messages:
        raise UsageError(f"{where}: `messages` must be a non-empty list of {{\"role\": ..., \"content\": ...}} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise UsageError(f"{where}: message {i + 1} needs a string \"content\"")
        if message.get("role") not in ROLES:
            raise UsageError(f"{where}: message {i + 1} has role {message.get('role')!r}; use one of {', '.join(ROLES)}")
        if message["role"] == "system" and i > 0:
            raise UsageError(f"{where}: message {i + 1} is a system message; only the first message may be one")


def read_conversations(path):
    """The conversations of a JSONL file: one {"messages": [...]} object per line (extra fields are kept)."""
    text = read_jsonl_text(path, "conversation", '{"messages": [...]}')
    conversations = []
    for line_number, record in jsonl_records(path, text):
        if not isinstance(record, dict) or "messages" not in record:
            raise UsageError(f"{path}:{line_number} has no \"messages\" field; each line must be {{\"messages\": [...]}}")
        check_messages(record["messages"], f"{path}:{line_number}")
        conversations.append(record)
    if not conversations:
        raise UsageError(f"{path} holds no conversations")
    return conversations


def dataset_conversations(name, split="train"):
    """The conversations of a Hugging Face dataset with a `messages` column."""
    conversations = []
    for i, messages in enumerate(dataset_documents(name, split, text_field="messages")):
        messages = [{"role": m.get("role"), "content": m.get("content")} if isinstance(m, dict) else m for m in messages]
        check_messages(messages, f"dataset {name!r} record {i + 1}")
        conversations.append({"messages": messages})
    if not conversations:
        raise UsageError(f"dataset {name!r} split {split!r} holds no conversations")
    return conversations


def fit_to_context(ids, mask, max_tokens):
    """Cut a rendered conversation to at most max_tokens on a turn boundary; None when no assistant turn fits.

    Training rows hold max_tokens = block_size + 1 tokens (inputs and shifted targets). A turn ends after an
    <|assistant_end|>, which is the last token with mask 1 in a run of them.
    """
    if len(ids) <= max_tokens:
        return (ids, mask) if any(mask[1:]) else None
    cut = 0
    for i in range(1, max_tokens):
        if mask[i] == 1 and (i + 1 == len(mask) or mask[i + 1] == 0):
            cut = i + 1  # just after an assistant turn's end
    if cut == 0:
        return None
    return ids[:cut], mask[:cut]


def conversation_rows(tokenizer, conversations, max_tokens):
    """Render conversations into (ids, mask) training rows of at most max_tokens tokens.

    Longer conversations are cut on a turn boundary, or dropped when not even their first assistant turn fits.
    Returns (rows, number truncated, number dropped) so the caller can report both.
    """
    rows, truncated, dropped = [], 0, 0
    for conversation in conversations:
        ids, mask = render_conversation(tokenizer, conversation["messages"])
        fitted = fit_to_context(ids, mask, max_tokens)
        if fitted is None:
            dropped += 1
            continue
        truncated += len(fitted[0]) < len(ids)
        rows.append(fitted)
    return rows, truncated, dropped
