"""The alignment demo's task: short requests whose best reply a program can name exactly, and a judge that prefers it.

Two kinds of request, both answered by copying from the prompt, so a model can get held-out ones right (RECALL_SHARE
of them recall, the rest repeats):
- recall: a fact and a question about it in one message ("My name is Mezo. What is my name?" -> "Your name is
  Mezo."), the facts and their values as the chat demo's training ones (gptkit/demo_chat.py: real and made-up names
  and places, colours, numbers, dates);
- repeat: "Repeat after me: moon salt" -> "moon salt", one to three common words.
A request is held out by a hash of its text: no held-out request occurs in the fine-tuning data or the training prompts.
The judge scores a reply 1.0 when it is exactly the expected answer, 0.5 when it gives that answer wrapped in chatter
("Sure! Your name is Ingrid."), 0.0 otherwise.

The fine-tuning conversations are deliberately mixed, as human-written demonstrations are: only EXACT_SHARE of the
replies are the plain answer, the rest open with "Sure!" and some also close with an offer of more help. A model
fine-tuned on them answers correctly but mostly chattily, which leaves the feedback stage room to show: the plain
answer is in its distribution, and preference learning or RL must make it the usual one.
"""
import random
import zlib

from gptkit.demo_chat import FACTS, PHRASING_WORDS, SYSTEM_PROMPTS, VALUES, WORDS, mentions, value_split
from gptkit.errors import UsageError

KINDS = ("recall", "repeat")
SPLITS = ("train", "heldout")
RECALL_FACTS = ("name", "colour", "number", "city", "pet", "date")  # not passwords: too hard to copy for the demo's tiny model
RECALL_SHARE = 0.2  # of requests; the rest are repeats (copying a made-up name is where the tiny model errs)
EXACT_SHARE = 0.3  # of fine-tuning replies: the plain answer
CHATTY = (("Sure! {answer}", 0.5), ("Sure! {answer} Let me know if you need anything else.", 0.2))


def split_of(text):
    """'heldout' for one request in five (by a hash of its text: the same everywhere), 'train' for the rest."""
    return "heldout" if zlib.crc32(text.encode("utf-8")) % 5 == 0 else "train"


def listed_value(rng, fact):
    """A value of the chat demo's training set (gptkit/demo_chat.py): real and made-up names and places, colours,
    numbers, dates; not its random-letter words, which the demo's tiny model copies too unreliably for this task."""
    while True:
        value = VALUES[fact](rng, "train")
        if value_split(value) == "train" and value.lower() not in PHRASING_WORDS:
            return value


def question(rng, split):
    """(kind, request, expected answer) of `split`, drawn from rng."""
    while True:
        if rng.random() < RECALL_SHARE:
            fact = rng.choice(RECALL_FACTS)
            value = listed_value(rng, fact)
            statement, _, asked, answer = FACTS[fact]
            kind, text, answer = "recall", f"{statement.format(value)} {asked}", answer.format(value)
        else:
            words = " ".join(rng.sample(WORDS, rng.randint(1, 3)))
            kind, text, answer = "repeat", f"Repeat after me: {words}", words
        if split_of(text) == split:
            return kind, text, answer


def prompt_messages(rng, text):
    system = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 1 / 3 else []
    return system + [{"role": "user", "content": text}]


def make_prompts(n, seed, split="train"):
    """n prompt rows {"prompt": [messages], "answer": ..., "kind": ...} (the answer is what the judge expects)."""
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; the splits are {', '.join(SPLITS)}")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        kind, text, answer = question(rng, split)
        rows.append({"prompt": prompt_messages(rng, text), "answer": answer, "kind": kind})
    return rows


def chatty_or_plain(rng, answer):
    if rng.random() < EXACT_SHARE:
        return answer
    templates, weights = zip(*CHATTY)
    return rng.choices(templates, weights)[0].format(answer=answer)


def make_conversations(n, seed):
    """n fine-tuning conversations on training questions, their replies mixed as EXACT_SHARE says."""
    rng = random.Random(seed)
    conversations = []
    for row in make_prompts(n, seed + 1):
        conversations.append({"kind": row["kind"], "messages": row["prompt"] + [{"role": "assistant", "content": chatty_or_plain(rng, row["answer"])}]})
    return conversations


def judge(reply, row):
    """1.0 for exactly the expected answer, 0.5 for the answer with other words around it, else 0.0."""
    reply, answer = reply.strip(), row["answer"]
    if reply == answer:
        return 1.0
    return 0.5 if mentions(reply, answer.rstrip(".")) else 0.0


def compare(a, b, row):
    """Which reply the judge prefers: 1 for a, -1 for b, 0 for a tie."""
    sa, sb = judge(a, row), judge(b, row)
    return (sa > sb) - (sa < sb)
