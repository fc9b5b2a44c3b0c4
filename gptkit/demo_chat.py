"""Synthetic chat conversations whose final answers can be checked exactly: the chat demo's data (data/synthetic_chat.py writes them).

Each conversation is {"kind": KIND, "messages": [{"role": ..., "content": ...}, ...]}: an optional system message,
then user/assistant turns; the last assistant message is the answer, fully determined by the messages before it.
The phrasing is fixed per kind and only the facts vary, so a tiny model fine-tuned for minutes can learn it.
"""
import random
import re

from gptkit.errors import UsageError

CONVERSATION_KINDS = ("recall", "arithmetic", "next_day", "repeat")

SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a friendly assistant.", "You are a helpful and concise assistant.")

# No name doubles as a month, a colour or a word below, so a fact never shows up by chance in a distractor turn.
NAMES = ("Maria", "James", "Anna", "David", "Sofia", "Lucas", "Emma", "Noah", "Olivia", "Liam", "Mia", "Ethan", "Chloe",
         "Daniel", "Grace", "Samuel", "Laura", "Peter", "Nina", "Omar", "Fatima", "Ali", "Priya", "Ravi", "Mei", "Ken",
         "Yuki", "Hana", "Carlos", "Elena", "Pablo", "Lucia", "Ivan", "Olga", "Tom", "Sara", "Leo", "Zoe", "Adam", "Ruth")
COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white", "grey", "gold")
CITIES = ("Lima", "Paris", "London", "Tokyo", "Cairo", "Madrid", "Rome", "Berlin", "Vienna", "Oslo", "Dublin", "Lisbon",
          "Athens", "Prague", "Warsaw", "Moscow", "Delhi", "Mumbai", "Seoul", "Beijing", "Sydney", "Toronto", "Chicago",
          "Boston", "Denver", "Nairobi", "Lagos", "Accra", "Bogota", "Santiago")
WORDS = ("river", "stone", "tree", "house", "bird", "apple", "bread", "water", "light", "cloud", "moon", "sun", "star",
         "rain", "snow", "wind", "fire", "book", "door", "road", "hill", "lake", "fish", "cat", "dog", "horse", "ship",
         "boat", "train", "chair", "table", "cup", "milk", "egg", "salt", "sand", "leaf", "rock", "field", "song", "bell",
         "key", "box", "hat", "coat", "shoe", "ring", "blue", "red", "green", "small", "big", "old", "new", "happy",
         "quiet", "warm", "cold", "fast", "slow")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December")

# (statement, acknowledgement, question, answer, values); "{}" is the fact.
FACTS = (
    ("My name is {}.", "Nice to meet you, {}.", "What is my name?", "Your name is {}.", NAMES),
    ("My favourite colour is {}.", "{} is a nice colour.", "What is my favourite colour?", "Your favourite colour is {}.", COLOURS),
    ("My lucky number is {}.", "I will remember {}.", "What is my lucky number?", "Your lucky number is {}.", tuple(map(str, range(100)))),
    ("I live in {}.", "{} sounds lovely.", "Where do I live?", "You live in {}.", CITIES),
)


def arithmetic_turn(rng):
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if rng.random() < 0.5:
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    a, b = max(a, b), min(a, b)  # keep the result non-negative
    return f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}."


def next_day_turn(rng):
    unit, names = rng.choice((("day", DAYS), ("month", MONTHS)))
    i = rng.randrange(len(names))
    return f"What {unit} comes after {names[i]}?", f"{names[(i + 1) % len(names)]} comes after {names[i]}."


def repeat_turn(rng):
    words = " ".join(rng.sample(WORDS, rng.randint(2, 4)))
    return f"Repeat after me: {words}", words


TURNS = {"arithmetic": arithmetic_turn, "next_day": next_day_turn, "repeat": repeat_turn}


def recall_turns(rng):
    """State a fact, talk about other things for 1-3 turns, then ask for the fact back."""
    statement, ack, question, answer, values = rng.choice(FACTS)
    fact = rng.choice(values)
    ack = ack.format(fact)
    turns = [(statement.format(fact), ack[0].upper() + ack[1:])]
    for _ in range(rng.randint(1, 3)):
        while True:  # a distractor that mentions the fact would leak the answer from somewhere else
            q, a = TURNS[rng.choice(tuple(TURNS))](rng)
            if fact.lower() not in words_of(q + " " + a):
                break
        turns.append((q, a))
    turns.append((question, answer.format(fact)))
    return turns


def words_of(text):
    return set(re.findall(r"\w+", text.lower()))


def make_conversation(rng, kind):
    """One conversation of `kind`, drawn from `rng` (a random.Random)."""
    if kind not in CONVERSATION_KINDS:
        raise UsageError(f"unknown conversation kind {kind!r}; the kinds are {', '.join(CONVERSATION_KINDS)}")
    messages = []
    if rng.random() < 1 / 3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    if kind == "recall":
        turns = recall_turns(rng)
    else:  # earlier turns of any non-recall kind; the last, checked one of this kind
        turns = [TURNS[rng.choice(tuple(TURNS))](rng) for _ in range(rng.randint(0, 2))] + [TURNS[kind](rng)]
    for question, answer in turns:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"kind": kind, "messages": messages}


def make_conversations(n, seed, kinds=CONVERSATION_KINDS):
    """n conversations, the same for the same seed, cycling through `kinds` so each gets an even share.

    A kind listed twice gets twice the share.
    """
    kinds = tuple(kinds)
    if not kinds:
        raise UsageError(f"no conversation kinds given; choose from {', '.join(CONVERSATION_KINDS)}")
    unknown = [k for k in kinds if k not in CONVERSATION_KINDS]
    if unknown:
        raise UsageError(f"unknown conversation kind {', '.join(map(repr, unknown))}; the kinds are {', '.join(CONVERSATION_KINDS)}")
    rng = random.Random(seed)
    return [make_conversation(rng, kinds[i % len(kinds)]) for i in range(n)]


def split_prompt_answer(conversation):
    """(the messages before the last, the last assistant message's text): the prompt to generate from and the expected reply."""
    messages = conversation["messages"]
    if not messages or messages[-1]["role"] != "assistant":
        raise UsageError("a conversation must end with an assistant message to be checked")
    return messages[:-1], messages[-1]["content"]

