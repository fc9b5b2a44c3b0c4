"""Preference pairs and RL prompts: what the reward model, DPO, PPO and GRPO objectives read.

A pair is a prompt (messages ending with the user's) and two assistant replies to it, one preferred. Three record shapes
are read, so TRL and Anthropic HH data work as they are:
    explicit prompt: {"prompt": [messages] | "text", "chosen": [assistant message] | "text", "rejected": ...}
    implicit prompt: {"chosen": [whole conversation], "rejected": [whole conversation]}  (same prompt, different last reply)
    Anthropic HH:    {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}
A prompt row for RL is {"prompt": [messages] | "text", ...} or {"messages": [...]}; its other fields go to the reward function.

Rows that cannot be used are returned as "where: reason" strings rather than raised or dropped: one bad row in a
large download should not stop a run, and the caller prints how many and which were skipped.
"""
import json
import re
from dataclasses import dataclass

from gptkit.chat_template import check_messages, messages_prompt
from gptkit.errors import UsageError
from gptkit.files import read_jsonl_text
from gptkit.sources import load_dataset

HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass
class Pair:
    prompt: list  # messages ending with the user's
    chosen: str  # the preferred reply's text
    rejected: str
    where: str  # "path:LINE" or "dataset NAME record N", for messages


@dataclass
class PromptRow:
    prompt: list  # messages ending with the user's
    fields: dict  # the row's other fields (e.g. "answer"), for the reward function
    where: str


def parse_pair(record, where):
    """The Pair of one record in any of the three shapes; ValueError(reason) when it cannot be used."""
    if not isinstance(record, dict):
        raise ValueError('not a JSON object; each row must be {"chosen": ..., "rejected": ...}')
    missing = [key for key in ("chosen", "rejected") if record.get(key) is None]
    if missing:
        raise ValueError(f"no {' or '.join(repr(k) for k in missing)} field")
    chosen, rejected = record["chosen"], record["rejected"]
    if record.get("prompt") is not None:  # a Hugging Face column absent from a row reads as None
        prompt = as_messages(record["prompt"], "prompt")
        chosen, rejected = reply_text(chosen, "chosen"), reply_text(rejected, "rejected")
    elif isinstance(chosen, str) and isinstance(rejected, str):
        prompt, chosen = split_conversation(hh_turns(chosen, "chosen"), "chosen")
        other, rejected = split_conversation(hh_turns(rejected, "rejected"), "rejected")
        same_prompt(prompt, other)
    elif isinstance(chosen, list) and isinstance(rejected, list):
        prompt, chosen = split_conversation(as_messages(chosen, "chosen"), "chosen")
        other, rejected = split_conversation(as_messages(rejected, "rejected"), "rejected")
        same_prompt(prompt, other)
    else:
        raise ValueError(f"chosen is {type(chosen).__name__} and rejected is {type(rejected).__name__}; "
                         "give both as text or both as message lists")
    check_prompt(prompt)
    if chosen == rejected:
        raise ValueError("chosen and rejected are the same reply; there is nothing to learn from it")
    return Pair(prompt, chosen, rejected, where)


def as_messages(value, name):
    """A message list from messages or a string (one user message), keeping only role and content: Hugging Face
    gives every message the union of all messages' keys, the extra ones as None."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise ValueError(f"{name} must be text or a list of {{\"role\": ..., \"content\": ...}} objects, not {type(value).__name__}")
    messages = [{"role": m.get("role"), "content": m.get("content")} for m in value]
    try:
        check_messages(messages, name)
    except UsageError as e:
        raise ValueError(str(e)) from None
    return messages


def reply_text(value, name):
    """A reply given as text, or as messages whose last one is the assistant's (earlier ones, if any, are not read)."""
    if isinstance(value, str):
        return nonempty(value, name)
    last = as_messages(value, name)[-1]
    if last["role"] != "assistant":
        raise ValueError(f"{name} ends with a {last['role']} message; its last message must be the assistant's reply")
    return nonempty(last["content"], name)


def split_conversation(messages, name):
    """(prompt, reply text) of a whole conversation whose last message is the assistant's reply."""
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{name} ends with a {messages[-1]['role']} message; it must end with the assistant's reply")
    if len(messages) < 2:
        raise ValueError(f"{name} holds only the reply; give the conversation before it, or a \"prompt\" field")
    return messages[:-1], nonempty(messages[-1]["content"], name)


def hh_turns(text, name):
    """The turns of an Anthropic HH transcript ("\\n\\nHuman: ...\\n\\nAssistant: ..."), each stripped."""
    parts = HH_TURN.split(text)  # [before the first marker, role, text, role, text, ...]
    if len(parts) < 3:
        raise ValueError(f"{name} is text with no \"\\n\\nHuman:\"/\"\\n\\nAssistant:\" turns; give a \"prompt\" field for plain replies")
    if parts[0].strip():
        raise ValueError(f"{name} has text before its first \"Human:\" turn")
    return [{"role": HH_ROLES[role], "content": turn.strip()} for role, turn in zip(parts[1::2], parts[2::2])]


def same_prompt(prompt, other):
    # Comparing replies only makes sense when both answer the same conversation.
    if prompt != other:
        raise ValueError("chosen and rejected differ before their last reply; they must answer the same conversation")


def check_prompt(messages):
    if messages[-1]["role"] != "user":
        raise ValueError(f"the prompt ends with a {messages[-1]['role']} message; it must end with the user's message")


def nonempty(text, name):
    if not text.strip():
        raise ValueError(f"{name} reply is empty")
    return text


def pair_ids(tokenizer, pair):
    """(prompt_ids, chosen_ids, rejected_ids): the prompt ends with <|assistant_start|>, each reply with <|assistant_end|>.
    Each part is tokenized on its own, so prompt_ids + chosen_ids is exactly what render_conversation gives the whole."""
    return messages_prompt(tokenizer, pair.prompt), reply_ids(tokenizer, pair.chosen), reply_ids(tokenizer, pair.rejected)


def reply_ids(tokenizer, text):
    """A reply's tokens as the assistant writes them: its text, then <|assistant_end|>."""
    return tokenizer.encode(text) + [tokenizer.special_id("<|assistant_end|>")]


def prompt_row(record, where):
    """The PromptRow of {"prompt": ..., ...} or {"messages": [...], ...}; ValueError(reason) when it cannot be used.
    A final assistant message in "messages" is a reference answer: it goes to fields["reference"], not to the prompt."""
    if not isinstance(record, dict):
        raise ValueError('not a JSON object; each row must be {"prompt": ...} or {"messages": [...]}')
    key = "prompt" if record.get("prompt") is not None else "messages" if record.get("messages") is not None else None
    if key is None:
        raise ValueError('no "prompt" or "messages" field')
    messages, fields = as_messages(record[key], key), {k: v for k, v in record.items() if k != key}
    if key == "messages" and messages[-1]["role"] == "assistant":
        if fields.get("reference") is not None:
            raise ValueError('ends with an assistant message and has a "reference" field; keep one of them')
        fields["reference"] = messages.pop()["content"]
        if not messages:
            raise ValueError("holds only an assistant message; give the user's message before it")
    check_prompt(messages)
    return PromptRow(messages, fields, where)


def read_pairs(path):
    """(pairs, bad rows) of a JSONL file of preference records."""
    return read_rows(path, parse_pair, "preference pairs", '{"prompt": ..., "chosen": ..., "rejected": ...}')


def read_prompts(path):
    """(prompt rows, bad rows) of a JSONL file of prompts."""
    return read_rows(path, prompt_row, "prompts", '{"prompt": ...} or {"messages": [...]}')


def dataset_pairs(name, split="train"):
    """(pairs, bad rows) of a Hugging Face dataset (a hub name or a local folder of data files) of preference records."""
    return collect(dataset_records(name, split), parse_pair, f"dataset {name!r} split {split!r}", "preference pairs")


def dataset_prompts(name, split="train"):
    """(prompt rows, bad rows) of a Hugging Face dataset of prompts."""
    return collect(dataset_records(name, split), prompt_row, f"dataset {name!r} split {split!r}", "prompts")


def read_rows(path, parse, what, shape):
    text = read_jsonl_text(path, what, shape)
    return collect(json_lines(path, text), lambda line, where: parse(loads(line), where), str(path), what)


def json_lines(path, text):
    """(where, line) per non-blank line of a JSONL text."""
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield f"{path}:{number}", line


def loads(line):
    # A line that is not JSON is one bad row, like any other: a truncated download should not lose the whole file.
    try:
        return json.loads(line)
    except ValueError as e:
        raise ValueError(f"not valid JSON ({e})") from None


def dataset_records(name, split):
    """(where, record) per record of a Hugging Face dataset."""
    for i, record in enumerate(load_dataset(name, split), 1):
        yield f"dataset {name!r} record {i}", record


def collect(records, parse, source, what):
    """Parse every record, keeping the good ones and a "where: reason" line for each bad one; none good is an error."""
    good, bad = [], []
    for where, record in records:
        try:
            good.append(parse(record, where))
        except ValueError as e:
            bad.append(f"{where}: {e}")
    if not good:
        detail = f"{len(bad)} unusable row(s), the first: {bad[0]}" if bad else "it is empty"
        raise UsageError(f"{source} holds no usable {what} ({detail})")
    return good, bad
