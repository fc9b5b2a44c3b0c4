"""Synthetic chat conversations whose final answers can be checked exactly: the chat demo's data (data/synthetic_chat.py writes them).

Each conversation is {"kind": KIND, "messages": [{"role": ..., "content": ...}, ...]}: an optional system message,
then user/assistant turns; the last assistant message is the answer, fully determined by the messages before it.
The phrasing is fixed per kind and only the facts vary, so a tiny model fine-tuned for minutes can learn it.

A "recall" conversation states one to three facts (a name, a favourite colour, a lucky number, a city, a pet's name,
a password, a birthday, a shopping list) and later asks for one of them back, 0 to `max_gap` turns after it was
stated; it also carries {"recall": {"fact", "value", "gap", "facts"}} (the fact asked, its value, the turns in between
and how many facts were stated). The values come from open sets (words made of syllables, numbers of 1 to 6 digits,
made-up places, lists of items) so the only way to answer is to copy what was said.

Two splits draw their values from disjoint sets, decided for any string by `value_split`: "train" (what the demo
fine-tunes on) and "heldout" (values no training conversation states: other syllables, other numbers, other colour
and item words, other real names and cities). Every held-out conversation states a held-out value, so none of them
is also a training conversation, and held-out recall gaps are spread evenly up to `max_gap` where training ones lean short.
"""
import calendar
import random
import re

from gptkit.errors import UsageError

CONVERSATION_KINDS = ("recall", "arithmetic", "next_day", "repeat")
SPLITS = ("train", "heldout")
MAX_GAP = 7  # turns between a fact and its question; with the other turns, the longest conversations fill ~200 tokens of the demo's 4,096-token BPE

SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a friendly assistant.", "You are a helpful and concise assistant.")

WORDS = ("river", "stone", "tree", "house", "bird", "apple", "bread", "water", "light", "cloud", "moon", "sun", "star",
         "rain", "snow", "wind", "fire", "book", "door", "road", "hill", "lake", "fish", "cat", "dog", "horse", "ship",
         "boat", "train", "chair", "table", "cup", "milk", "egg", "salt", "sand", "leaf", "rock", "field", "song", "bell",
         "key", "box", "hat", "coat", "shoe", "ring", "blue", "red", "green", "small", "big", "old", "new", "happy",
         "quiet", "warm", "cold", "fast", "slow")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = tuple(calendar.month_name[1:])

# --- fact values: two disjoint sets, "train" and "heldout" ---------------------------------------------------------------

# Made-up words are syllables (an onset and one vowel; a bare vowel only first) and maybe a final consonant, so each
# splits into syllables one way only; every fourth syllable is held out, so both splits use every letter.
VOWELS = "aeiou"
ONSETS = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "y", "z", "ch", "sh", "th")
CODAS = ("n", "l", "r", "s")
_SYLLABLES = tuple(VOWELS) + tuple(onset + vowel for onset in ONSETS for vowel in VOWELS)
SYLLABLES = {"train": tuple(s for i, s in enumerate(_SYLLABLES) if i % 4 != 3),
             "heldout": tuple(s for i, s in enumerate(_SYLLABLES) if i % 4 == 3)}
INNER_SYLLABLES = {split: tuple(s for s in SYLLABLES[split] if s not in VOWELS) for split in SPLITS}  # a bare vowel only first

# Real names, cities and pets' names: "train" holds the demo's original lists.
NAMES = {"train": ("Maria", "James", "Anna", "David", "Sofia", "Lucas", "Emma", "Noah", "Olivia", "Liam", "Mia", "Ethan", "Chloe",
                   "Daniel", "Grace", "Samuel", "Laura", "Peter", "Nina", "Omar", "Fatima", "Ali", "Priya", "Ravi", "Mei", "Ken",
                   "Yuki", "Hana", "Carlos", "Elena", "Pablo", "Lucia", "Ivan", "Olga", "Tom", "Sara", "Leo", "Zoe", "Adam", "Ruth"),
         "heldout": ("Zebulon", "Ingrid", "Kwame", "Astrid", "Tariq", "Mateo", "Freya", "Joaquin", "Nadia", "Bruno", "Aiko",
                     "Soren", "Imani", "Dmitri", "Leila", "Oscar", "Hugo", "Amara", "Felix", "Rosa", "Viktor", "Keiko", "Malik",
                     "Esther", "Yusuf", "Ines", "Teodor", "Chidi", "Anya", "Rahul", "Sven", "Greta", "Kofi", "Lena", "Jonas",
                     "Marta", "Farah", "Hiro", "Nikolai", "Ayla")}
CITIES = {"train": ("Lima", "Paris", "London", "Tokyo", "Cairo", "Madrid", "Rome", "Berlin", "Vienna", "Oslo", "Dublin", "Lisbon",
                    "Athens", "Prague", "Warsaw", "Moscow", "Delhi", "Mumbai", "Seoul", "Beijing", "Sydney", "Toronto", "Chicago",
                    "Boston", "Denver", "Nairobi", "Lagos", "Accra", "Bogota", "Santiago"),
          "heldout": ("Reykjavik", "Helsinki", "Kyoto", "Havana", "Manila", "Jakarta", "Hanoi", "Karachi", "Tehran", "Riga",
                      "Tallinn", "Zagreb", "Belgrade", "Budapest", "Stockholm", "Amsterdam", "Brussels", "Geneva", "Zurich",
                      "Munich", "Naples", "Venice", "Seville", "Porto", "Lyon", "Quito", "Caracas", "Dakar", "Kampala", "Tunis")}
PETS = {"train": ("Rex", "Max", "Bella", "Luna", "Charlie", "Daisy", "Buddy", "Coco", "Rocky", "Molly", "Teddy", "Ginger"),
        "heldout": ("Biscuit", "Clover", "Ziggy", "Mochi", "Waffles", "Noodle", "Pickles", "Gizmo", "Bramble", "Pumpkin", "Muffin", "Sprout")}
COLOURS = {"train": ("red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white", "grey", "gold"),
           "heldout": ("teal", "violet", "amber", "crimson", "indigo", "maroon", "olive", "navy", "coral", "beige", "ivory",
                       "lilac", "cyan", "magenta", "scarlet", "turquoise", "silver", "bronze", "khaki", "mauve")}
SHADES = ("light", "dark", "pale", "bright", "deep")  # shared: a colour's split is its last word's
ITEMS = {"train": ("bread", "milk", "eggs", "rice", "butter", "cheese", "tea", "coffee", "sugar", "apples", "bananas", "carrots",
                   "potatoes", "tomatoes", "soap", "pasta", "jam", "oats", "juice", "yogurt", "chicken", "salt", "oranges", "grapes"),
         "heldout": ("flour", "honey", "lemons", "onions", "pepper", "lentils", "candles", "batteries", "cereal", "mushrooms",
                     "peaches", "spinach", "garlic", "noodles", "biscuits", "crackers", "vinegar", "plums", "cucumbers",
                     "sausages", "mustard", "tissues", "matches", "cabbage")}
LISTED = {split: {v.lower() for v in NAMES[split] + CITIES[split] + PETS[split] + COLOURS[split] + ITEMS[split]} for split in SPLITS}


def word_split(word):
    """The split whose syllables alone make up the made-up word `word` (any case), else None."""
    match = re.fullmatch(r"((?:[^aeiou]*[aeiou])+)([nlrs]?)", word.lower())
    if not match:
        return None
    syllables = re.findall(r"[^aeiou]*[aeiou]", match.group(1))
    if any(s in VOWELS for s in syllables[1:]):
        return None
    return next((split for split in SPLITS if all(s in SYLLABLES[split] for s in syllables)), None)


def number_split(n):
    return "heldout" if n % 3 == 1 else "train"


def date_split(day, month):
    return "heldout" if (day + 31 * month) % 3 == 1 else "train"


def value_split(value):
    """"train" or "heldout": the one split whose fact values include `value` (case ignored), or None for a string neither makes.

    One function decides for every string, so no value is in both splits: the splits are disjoint by construction.
    """
    v = value.lower()
    for split in SPLITS:
        if v in LISTED[split]:
            return split
    if re.fullmatch(r"[0-9]+", v):
        return number_split(int(v))
    if match := re.fullmatch(r"([0-9]{1,2}) (\w+)", v):
        month = next((i for i, m in enumerate(MONTHS, 1) if m.lower() == match.group(2)), None)
        if month and 1 <= int(match.group(1)) <= calendar.monthrange(2001, month)[1]:
            return date_split(int(match.group(1)), month)
        return None
    if match := re.fullmatch(r"(\w+) (\w+)", v):
        if match.group(1) in SHADES:
            return next((split for split in SPLITS if match.group(2) in COLOURS[split]), None)
    if "," in v or " and " in v:
        items = re.split(r", | and ", v)
        if len(items) == len(set(items)) and len(items) >= 2:
            return next((split for split in SPLITS if all(item in ITEMS[split] for item in items)), None)
        return None
    if match := re.fullmatch(r"([a-z]+)[0-9]{1,3}", v):
        return word_split(match.group(1))
    return word_split(v)


def made_up_word(rng, split, syllables, coda=0.3):
    word = rng.choice(SYLLABLES[split]) + "".join(rng.choice(INNER_SYLLABLES[split]) for _ in range(syllables - 1))
    return word + (rng.choice(CODAS) if rng.random() < coda else "")


def listed_or_made_up(rng, split, listed, syllables):
    if rng.random() < 0.25:
        return rng.choice(listed[split])
    return made_up_word(rng, split, rng.randint(*syllables)).capitalize()


def number_value(rng, split):
    digits = rng.choices(range(1, 7), weights=(1, 2, 2, 2, 2, 2))[0]
    return str(rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits))


def date_value(rng, split):
    month = rng.randint(1, 12)
    return f"{rng.randint(1, calendar.monthrange(2001, month)[1])} {MONTHS[month - 1]}"


def colour_value(rng, split):
    base = rng.choice(COLOURS[split])
    return f"{rng.choice(SHADES)} {base}" if rng.random() < 0.5 else base


def spoken_list(items):
    """"a, b and c": how a shopping list is said (value_split reads it back the same way)."""
    return f"{', '.join(items[:-1])} and {items[-1]}"


def list_value(rng, split):
    return spoken_list(rng.sample(ITEMS[split], rng.randint(2, 4)))


VALUES = {  # fact -> maker(rng, split); a maker may return a value of the other split, which make_value rejects
    "name": lambda rng, split: listed_or_made_up(rng, split, NAMES, (2, 3)),
    "colour": colour_value,
    "number": number_value,
    "city": lambda rng, split: listed_or_made_up(rng, split, CITIES, (2, 4)),
    "pet": lambda rng, split: listed_or_made_up(rng, split, PETS, (2, 2)),
    "password": lambda rng, split: made_up_word(rng, split, rng.randint(2, 3), coda=0) + str(rng.randint(1, 999)),
    "date": date_value,
    "list": list_value,
}

# fact -> (statement, acknowledgement, question, answer); "{}" is the value. One phrasing per fact.
FACTS = {
    "name": ("My name is {}.", "Nice to meet you, {}.", "What is my name?", "Your name is {}."),
    "colour": ("My favourite colour is {}.", "{} is a nice colour.", "What is my favourite colour?", "Your favourite colour is {}."),
    "number": ("My lucky number is {}.", "I will remember {}.", "What is my lucky number?", "Your lucky number is {}."),
    "city": ("I live in {}.", "{} sounds lovely.", "Where do I live?", "You live in {}."),
    "pet": ("My pet is called {}.", "{} is a lovely name for a pet.", "What is my pet called?", "Your pet is called {}."),
    "password": ("My password is {}.", "I will keep {} safe.", "What is my password?", "Your password is {}."),
    "date": ("My birthday is on {}.", "I have noted {}.", "When is my birthday?", "Your birthday is on {}."),
    "list": ("My shopping list is {}.", "I have your list: {}.", "What is on my shopping list?", "Your shopping list is {}."),
}


# Training also states free values, in no split: random letters ("Xqorv", "bzt and ulemkaw") and, given the
# tokenizer's word pieces, tokens joined ("Umberandleion"). A fine-tuned model all but never writes a token no
# training reply holds (every step pushes the others down): with random letters alone, 248 of the 10,789 tokens of
# 2,000 held-out values were in no reply of the demo's training set, with the word pieces 1 (docs/chat.md). None is
# a held-out value (free_word rejects those), so the splits stay disjoint.
FREE_SHARE = 0.5  # of training values for the facts below
PIECE_SHARE = 0.75  # of free words, when the word pieces are given
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def word_pieces(tokenizer):
    """The tokenizer's tokens made of ASCII letters alone, lower-cased, without their leading space: what free values
    are made of, so that each such token is in some value to copy."""
    pieces = {tokenizer.decode([i]).strip().lower() for i in range(tokenizer.n_vocab)}
    return tuple(sorted(p for p in pieces if p.isascii() and p.isalpha()))


def free_word(rng, pieces=()):
    """A word that is no held-out value and no word of the phrasing: 2 to 8 random letters or, given word pieces,
    often one to three of them joined."""
    while True:
        if pieces and rng.random() < PIECE_SHARE:
            word = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 3)))
        else:
            word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 8)))
        if 2 <= len(word) <= 16 and value_split(word) != "heldout" and word not in PHRASING_WORDS:
            return word


def free_words(rng, n, pieces=()):
    words = []
    while len(words) < n:
        if (word := free_word(rng, pieces)) not in words:
            words.append(word)
    return words


FREE_VALUES = {
    "name": lambda rng, pieces: free_word(rng, pieces).capitalize(),
    "city": lambda rng, pieces: free_word(rng, pieces).capitalize(),
    "pet": lambda rng, pieces: free_word(rng, pieces).capitalize(),
    "password": lambda rng, pieces: free_word(rng, pieces) + str(rng.randint(1, 999)),
    "colour": free_word,
    "list": lambda rng, pieces: spoken_list(free_words(rng, rng.randint(2, 4), pieces)),
}


def make_value(rng, fact, split, pieces=()):
    """A value for `fact` from `split`'s set (or, in training, a free value) that is no word of the fixed phrasing
    (a name "Name" would be in the question)."""
    while True:
        if split == "train" and fact in FREE_VALUES and rng.random() < FREE_SHARE:
            value, allowed = FREE_VALUES[fact](rng, pieces), ("train", None)
        else:
            value, allowed = VALUES[fact](rng, split), (split,)
        if value_split(value) in allowed and value.lower() not in PHRASING_WORDS:
            return value


PHRASING_WORDS = {w for text in SYSTEM_PROMPTS + tuple(t for texts in FACTS.values() for t in texts) for w in re.findall(r"[a-z]+", text.lower())}


def fact_turn(fact, value):
    """The user stating the fact and the assistant acknowledging it."""
    statement, ack, _, _ = FACTS[fact]
    ack = ack.format(value)
    return statement.format(value), ack[0].upper() + ack[1:]


def mentions(text, value):
    """Whether `text` holds `value` as whole words (case ignored): "Ann" is not in "Anna", "7" is not in "17"."""
    return re.search(rf"(?<!\w){re.escape(value.lower())}(?!\w)", text.lower()) is not None


# --- the other kinds of turn ---------------------------------------------------------------------------------------------

def arithmetic_turn(rng, split=None, pieces=()):
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if rng.random() < 0.5:
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    a, b = max(a, b), min(a, b)  # keep the result non-negative
    return f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}."


def next_day_turn(rng, split=None, pieces=()):
    unit, names = rng.choice((("day", DAYS), ("month", MONTHS)))
    i = rng.randrange(len(names))
    return f"What {unit} comes after {names[i]}?", f"{names[(i + 1) % len(names)]} comes after {names[i]}."


def repeat_turn(rng, split="heldout", pieces=()):
    """Common words; in training, half the time free words instead (more practice at copying any token). The reply puts
    a word before them, so that the first is written as in the request, after a space: the same tokens to copy."""
    n = rng.randint(2, 4)
    words = " ".join(free_words(rng, n, pieces) if split == "train" and rng.random() < 0.5 else rng.sample(WORDS, n))
    return f"Repeat after me: {words}", f"You said: {words}."


TURNS = {"arithmetic": arithmetic_turn, "next_day": next_day_turn, "repeat": repeat_turn}


def distractor(rng, split, avoid=None, pieces=()):
    """A turn of a random non-recall kind that does not mention `avoid` (which would leak the answer from elsewhere)."""
    while True:
        question, answer = TURNS[rng.choice(tuple(TURNS))](rng, split, pieces)
        if avoid is None or not mentions(f"{question} {answer}", avoid):
            return question, answer


# --- conversations -------------------------------------------------------------------------------------------------------

def draw_gap(rng, split, max_gap):
    """Turns between a fact and its question: held out, even over 0..max_gap; training, half of them in the shorter half."""
    if split == "train" and rng.random() < 0.5:
        return rng.randint(0, max_gap // 2)
    return rng.randint(0, max_gap)


def recall_turns(rng, split, max_gap, pieces=()):
    """Turns that state one to three facts, among other turns, then ask one back; and what was asked."""
    gap = draw_gap(rng, split, max_gap)
    lead = 0 if rng.random() < 0.5 else rng.randint(0, min(2, max_gap - gap))  # turns before the fact asked for
    n_facts = min(rng.choices((1, 2, 3), weights=(5, 3, 2))[0], lead + gap + 1)
    asked, *others = rng.sample(tuple(FACTS), n_facts)
    value = make_value(rng, asked, split, pieces)
    turns = [None] * (lead + 1 + gap)
    turns[lead] = fact_turn(asked, value)
    for fact, i in zip(others, rng.sample([i for i in range(len(turns)) if i != lead], len(others))):
        while True:  # another fact whose words do not hold the value asked for
            turn = fact_turn(fact, make_value(rng, fact, split, pieces))
            if not mentions(" ".join(turn), value):
                turns[i] = turn
                break
    turns = [turn or distractor(rng, split, value, pieces) for turn in turns]
    _, _, question, answer = FACTS[asked]
    return turns + [(question, answer.format(value))], {"fact": asked, "value": value, "gap": gap, "facts": n_facts}


def other_turns(rng, kind, split, pieces=()):
    """0-2 earlier turns of any non-recall kind, sometimes (always when held out) a fact stated among them, then the checked turn."""
    turns = [distractor(rng, split, pieces=pieces) for _ in range(rng.randint(0, 2))]
    if split == "heldout" or rng.random() < 0.3:
        fact = rng.choice(tuple(FACTS))
        turns.insert(rng.randint(0, len(turns)), fact_turn(fact, make_value(rng, fact, split, pieces)))
    return turns + [TURNS[kind](rng, split, pieces)]


def check_split(split):
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; the splits are {', '.join(SPLITS)}")


def make_conversation(rng, kind, split="train", max_gap=MAX_GAP, pieces=()):
    """One conversation of `kind` with fact values from `split`, drawn from `rng` (a random.Random); training's free
    values are also made of `pieces` (word_pieces of a tokenizer) when given."""
    if kind not in CONVERSATION_KINDS:
        raise UsageError(f"unknown conversation kind {kind!r}; the kinds are {', '.join(CONVERSATION_KINDS)}")
    check_split(split)
    messages, extra = [], {}
    if rng.random() < 1 / 3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    if kind == "recall":
        turns, extra["recall"] = recall_turns(rng, split, max_gap, pieces)
    else:
        turns = other_turns(rng, kind, split, pieces)
    for question, answer in turns:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"kind": kind, "messages": messages, **extra}


def make_conversations(n, seed, kinds=CONVERSATION_KINDS, split="train", max_gap=MAX_GAP, pieces=()):
    """n conversations, the same for the same seed, cycling through `kinds` so each gets an even share.

    A kind listed twice gets twice the share. `split` is "train" (the values the demo fine-tunes on) or "heldout"
    (values from the disjoint held-out sets, recall gaps even up to `max_gap`): no held-out conversation is a training one.
    `pieces` (word_pieces of a tokenizer) also make training's free values.
    """
    kinds = tuple(kinds)
    if not kinds:
        raise UsageError(f"no conversation kinds given; choose from {', '.join(CONVERSATION_KINDS)}")
    unknown = [k for k in kinds if k not in CONVERSATION_KINDS]
    if unknown:
        raise UsageError(f"unknown conversation kind {', '.join(map(repr, unknown))}; the kinds are {', '.join(CONVERSATION_KINDS)}")
    check_split(split)
    if max_gap < 0:
        raise UsageError(f"max_gap must be 0 or more, not {max_gap}")
    rng = random.Random(seed)
    return [make_conversation(rng, kinds[i % len(kinds)], split, max_gap, pieces) for i in range(n)]


def training_conversations(n, seed, tokenizer):
    """The conversations `--chat_data=demo` fine-tunes `tokenizer`'s model on (train split), the same for the same n,
    seed and tokenizer: every letter token of its vocabulary is in some free value."""
    return make_conversations(n, seed, pieces=word_pieces(tokenizer))


def split_prompt_answer(conversation):
    """(the messages before the last, the last assistant message's text): the prompt to generate from and the expected reply."""
    messages = conversation["messages"]
    if not messages or messages[-1]["role"] != "assistant":
        raise UsageError("a conversation must end with an assistant message to be checked")
    return messages[:-1], messages[-1]["content"]
