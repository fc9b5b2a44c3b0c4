"""Synthetic chat data: well-formed conversations whose final answers an independent checker agrees with, fact values
from two disjoint splits, and recall gaps that reach the far end of the context."""
import itertools
import json
import random
import re
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gptkit import demo_chat
from gptkit.demo_chat import CONVERSATION_KINDS, MAX_GAP, make_conversation, make_conversations, split_prompt_answer, value_split
from gptkit.errors import UsageError
from helpers import run_script

DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = "January February March April May June July August September October November December".split()
FACT_QUESTIONS = {  # question -> (the statement that gives the fact, the answer template); written out here, not imported
    "What is my name?": (r"My name is (.+)\.", "Your name is {}."),
    "What is my favourite colour?": (r"My favourite colour is (.+)\.", "Your favourite colour is {}."),
    "What is my lucky number?": (r"My lucky number is (.+)\.", "Your lucky number is {}."),
    "Where do I live?": (r"I live in (.+)\.", "You live in {}."),
    "What is my pet called?": (r"My pet is called (.+)\.", "Your pet is called {}."),
    "What is my password?": (r"My password is (.+)\.", "Your password is {}."),
    "When is my birthday?": (r"My birthday is on (.+)\.", "Your birthday is on {}."),
    "What is on my shopping list?": (r"My shopping list is (.+)\.", "Your shopping list is {}."),
}
VALUE_SHAPES = {  # statement -> what its value must look like
    r"My name is (.+)\.": r"[A-Z][a-z]+",
    r"My favourite colour is (.+)\.": r"(?:(?:light|dark|pale|bright|deep) )?[a-z]+",
    r"My lucky number is (.+)\.": r"0|[1-9][0-9]{0,5}",
    r"I live in (.+)\.": r"[A-Z][a-z]+",
    r"My pet is called (.+)\.": r"[A-Z][a-z]+",
    r"My password is (.+)\.": r"[a-z]{2,}[0-9]{1,3}",
    r"My birthday is on (.+)\.": r"[1-9][0-9]? (?:" + "|".join(MONTHS) + ")",
    r"My shopping list is (.+)\.": r"[a-z]+(?:, [a-z]+){0,2} and [a-z]+",
}
KIND_OF_QUESTION = (("arithmetic", r"What is \d (plus|minus) \d\?"), ("next_day", r"What (day|month) comes after \w+\?"), ("repeat", r"Repeat after me: .+"))


def says(text, value):
    """Whether `text` holds `value` as whole words, case ignored."""
    return re.search(rf"(?<!\w){re.escape(value.lower())}(?!\w)", text.lower()) is not None


def user_turns(conversation):
    return [m["content"] for m in conversation["messages"] if m["role"] == "user"]


def statements(conversation):
    """[(user turn index, statement pattern, value)] for every fact the user states."""
    found = []
    for i, text in enumerate(user_turns(conversation)):
        for pattern in VALUE_SHAPES:
            if match := re.fullmatch(pattern, text):
                found.append((i, pattern, match.group(1)))
    return found


def stated_values(conversations):
    return {value.lower() for c in conversations for _, _, value in statements(c)}


def expected_answer(conversation):
    """The right final answer, worked out from the prompt alone, without the generator's code."""
    prompt, _ = split_prompt_answer(conversation)
    question = prompt[-1]["content"]
    if question in FACT_QUESTIONS:
        pattern, answer = FACT_QUESTIONS[question]
        values = [value for _, p, value in statements(conversation) if p == pattern]
        assert len(values) == 1, (question, values)  # stated exactly once: the answer is not ambiguous
        return answer.format(values[0])
    if match := re.fullmatch(r"What is (\d) (plus|minus) (\d)\?", question):
        a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
        result = a + b if op == "plus" else a - b
        assert result >= 0
        return f"{a} {op} {b} is {result}."
    if match := re.fullmatch(r"What (day|month) comes after (\w+)\?", question):
        names = DAYS if match.group(1) == "day" else MONTHS
        i = names.index(match.group(2))
        return f"{names[(i + 1) % len(names)]} comes after {names[i]}."
    if match := re.fullmatch(r"Repeat after me: ((?:[a-z]+ ){1,3}[a-z]+)", question):
        return f"You said: {match.group(1)}."
    raise AssertionError(f"unrecognised question {question!r}")


def assert_well_formed(conversation):
    kind = conversation["kind"]
    assert kind in CONVERSATION_KINDS and set(conversation) == ({"kind", "messages", "recall"} if kind == "recall" else {"kind", "messages"})
    messages = conversation["messages"]
    assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) and m["content"] for m in messages)
    roles = [m["role"] for m in messages]
    if roles[0] == "system":
        roles = roles[1:]
    assert roles and len(roles) % 2 == 0
    assert roles == ["user", "assistant"] * (len(roles) // 2)
    assert sum(len(m["content"]) for m in messages) <= 800  # bounded by MAX_GAP: no endless conversation
    for _, pattern, value in statements(conversation):
        assert re.fullmatch(VALUE_SHAPES[pattern], value), (pattern, value)
    last_question = user_turns(conversation)[-1]
    if kind == "recall":
        assert last_question in FACT_QUESTIONS
    else:
        assert re.fullmatch(dict(KIND_OF_QUESTION)[kind], last_question)


# --- every conversation ----------------------------------------------------------------------------------------------


def test_same_seed_same_conversations_other_seed_or_split_different():
    assert make_conversations(50, seed=3) == make_conversations(50, seed=3)
    assert make_conversations(50, seed=3, split="heldout") == make_conversations(50, seed=3, split="heldout")
    assert make_conversations(50, seed=3) != make_conversations(50, seed=4)
    assert make_conversations(50, seed=3) != make_conversations(50, seed=3, split="heldout")


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_every_conversation_is_well_formed_and_correctly_answered(split):
    conversations = make_conversations(2000, seed=0, split=split)
    for conversation in conversations:
        assert_well_formed(conversation)
        prompt, answer = split_prompt_answer(conversation)
        assert prompt == conversation["messages"][:-1]
        assert answer == expected_answer(conversation)
    with_system = sum(c["messages"][0]["role"] == "system" for c in conversations) / len(conversations)
    assert 0.25 < with_system < 0.42  # about a third


@given(st.integers(0, 2**63), st.sampled_from(CONVERSATION_KINDS), st.sampled_from(["train", "heldout"]), st.integers(0, 12))
def test_any_seed_gives_well_formed_correct_conversations(seed, kind, split, max_gap):
    conversation = make_conversation(random.Random(seed), kind, split, max_gap)
    if max_gap <= MAX_GAP:
        assert_well_formed(conversation)
    assert conversation["kind"] == kind
    assert split_prompt_answer(conversation)[1] == expected_answer(conversation)
    allowed = ("train", None) if split == "train" else ("heldout",)  # training also states values of random letters, in no split
    assert all(value_split(value) in allowed for _, _, value in statements(conversation))
    if kind == "recall":
        assert conversation["recall"]["gap"] <= max_gap


# --- recall ----------------------------------------------------------------------------------------------------------


def test_recall_value_is_said_only_when_stated_acknowledged_and_answered():
    for conversation in make_conversations(1500, seed=1, kinds=["recall"]):
        recall = conversation["recall"]
        value = recall["value"]
        users = user_turns(conversation)
        replies = [m["content"] for m in conversation["messages"] if m["role"] == "assistant"]
        question = users[-1]
        pattern, answer = FACT_QUESTIONS[question]
        where = [i for i, p, v in statements(conversation) if p == pattern]
        assert len(where) == 1 and replies[-1] == answer.format(value)
        stated = where[0]
        assert says(replies[stated], value)  # acknowledged
        for i, (user, reply) in enumerate(zip(users[:-1], replies[:-1])):
            if i != stated:  # nowhere else, not even inside another fact: the answer can come from one place only
                assert not says(user, value) and not says(reply, value), (value, user, reply)
        assert not says(question, value) and not any(says(m["content"], value) for m in conversation["messages"] if m["role"] == "system")
        assert recall["gap"] == len(users) - 2 - stated  # the user turns strictly between statement and question
        assert recall["facts"] == len(statements(conversation))
        for text in users[:-1]:
            assert any(re.fullmatch(p, text) for p in VALUE_SHAPES) or any(re.fullmatch(p, text) for _, p in KIND_OF_QUESTION)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_gaps_cover_zero_to_max_gap_and_several_facts_are_stated(split):
    recalls = [c["recall"] for c in make_conversations(2400, seed=2, kinds=["recall"], split=split)]
    gaps = Counter(r["gap"] for r in recalls)
    assert set(gaps) == set(range(MAX_GAP + 1)) and MAX_GAP >= 7
    assert min(gaps.values()) > 80  # every gap well represented, the longest included
    facts = Counter(r["facts"] for r in recalls)
    assert set(facts) == {1, 2, 3} and facts[2] > 300 and facts[3] > 150
    asked = Counter(r["fact"] for r in recalls)
    assert set(asked) == {"name", "colour", "number", "city", "pet", "password", "date", "list"} and min(asked.values()) > 200
    where = Counter()
    for c in make_conversations(600, seed=3, kinds=["recall"], split=split):
        pattern = FACT_QUESTIONS[user_turns(c)[-1]][0]
        where[next(i for i, p, _ in statements(c) if p == pattern)] += 1
    assert set(where) == {0, 1, 2} and where[0] < 500  # the fact asked for is not always the first thing said


def test_held_out_gaps_are_longer_than_most_training_ones():
    gaps = {split: [c["recall"]["gap"] for c in make_conversations(3000, seed=4, kinds=["recall"], split=split)] for split in ("train", "heldout")}
    long = {split: sum(g >= 5 for g in gaps[split]) / len(gaps[split]) for split in gaps}
    assert long["heldout"] > 0.3 and long["train"] < 0.25 and long["train"] > 0.1
    assert sorted(gaps["train"])[len(gaps["train"]) // 2] < sorted(gaps["heldout"])[len(gaps["heldout"]) // 2]


def test_max_gap_bounds_the_gap_and_the_length():
    recalls = [c["recall"]["gap"] for c in make_conversations(500, seed=5, kinds=["recall"], max_gap=2)]
    assert set(recalls) == {0, 1, 2}
    long = make_conversations(300, seed=5, kinds=["recall"], split="heldout", max_gap=15)
    assert max(c["recall"]["gap"] for c in long) == 15
    assert max(len(user_turns(c)) for c in long) <= 15 + 2
    with pytest.raises(UsageError, match="max_gap"):
        make_conversations(5, seed=0, max_gap=-1)


def test_values_vary_in_kind_and_length():
    values = {}
    for c in make_conversations(4000, seed=6, kinds=["recall"]):
        values.setdefault(c["recall"]["fact"], set()).add(c["recall"]["value"])
    assert {len(v) for v in values["number"]} == {1, 2, 3, 4, 5, 6}
    assert {len(re.split(r", | and ", v)) for v in values["list"]} == {2, 3, 4}
    assert len(values["name"]) > 400 and len({len(v) for v in values["name"]}) >= 5  # open sets, values of many lengths
    assert len(values["city"]) > 300 and len(values["password"]) > 400  # of ~500 each
    assert any(v in demo_chat.NAMES["train"] for v in values["name"])  # the original real names still occur


# --- the splits ------------------------------------------------------------------------------------------------------


def test_the_splits_value_inventories_are_disjoint():
    d = demo_chat
    assert not set(d.SYLLABLES["train"]) & set(d.SYLLABLES["heldout"])
    assert set(d.SYLLABLES["train"]) | set(d.SYLLABLES["heldout"]) >= {o + v for o in d.ONSETS for v in d.VOWELS}
    assert set("".join(d.SYLLABLES["heldout"])) == set("".join(d.SYLLABLES["train"]))  # both use every letter
    listed = {split: [v.lower() for lists in (d.NAMES, d.CITIES, d.PETS, d.COLOURS, d.ITEMS) for v in lists[split]] for split in d.SPLITS}
    assert not set(listed["train"]) & set(listed["heldout"])
    for split in d.SPLITS:
        assert all(value_split(v) == split for v in listed[split])
    # a made-up word of two syllables (and a final consonant or not) belongs to the split of its syllables, unless the
    # other split lists it (a real word such as "coral"), and then the generator does not make it for this split
    for split, other in (("train", "heldout"), ("heldout", "train")):
        words = [a + b + coda for a, b, coda in itertools.product(d.SYLLABLES[split], d.SYLLABLES[split], ("", *d.CODAS)) if b not in d.VOWELS]
        assert len(words) > 3000
        assert all(value_split(w) == split or w in listed[other] for w in words)
        assert sum(w in listed[other] for w in words) < 10
    numbers = {split: {n for n in range(100_000) if value_split(str(n)) == split} for split in d.SPLITS}
    assert not numbers["train"] & numbers["heldout"] and len(numbers["train"] | numbers["heldout"]) == 100_000
    assert min(len(numbers[s] & set(range(10 ** (k - 1) if k > 1 else 0, 10 ** k))) for s in d.SPLITS for k in range(1, 6)) >= 3  # every length
    for name in ("Zebulon", "Ingrid", "Kwame", "Reykjavik", "teal"):  # the names the issue found the old demo could not copy
        assert value_split(name) == "heldout"
    for name in ("Maria", "Lima", "blue", "dark blue", "7", "14 March", "bread, milk and eggs"):
        assert value_split(name) in ("train", "heldout")


def test_no_held_out_value_is_stated_in_any_training_conversation():
    train = make_conversations(4000, seed=7)
    heldout = make_conversations(4000, seed=8, split="heldout")
    train_values, heldout_values = stated_values(train), stated_values(heldout)
    assert len(train_values) > 1500 and len(heldout_values) > 1500
    assert not train_values & heldout_values
    assert all(value_split(v) in ("train", None) for v in train_values) and all(value_split(v) == "heldout" for v in heldout_values)
    free = [v for v in train_values if value_split(v) is None]  # random letters, there to teach copying any token
    assert 0.2 * len(train_values) < len(free) < 0.5 * len(train_values)
    # the numbers' and names' token shapes overlap: the same lengths occur in both
    for shape in (r"[0-9]+", r"[a-z]+"):
        lengths = [{len(v) for v in values if re.fullmatch(shape, v)} for values in (train_values, heldout_values)]
        assert len(lengths[0] & lengths[1]) >= 5


class PieceTokenizer:
    """A stand-in with the two things word_pieces reads: n_vocab and decode."""
    VOCAB = ["<|bos|>", " The", "the", "umber", " Set", "andle", "123", " x", " é", ",", "teal", " Zebulon", "ion", " ing", "Ab"]
    n_vocab = len(VOCAB)

    def decode(self, ids):
        return "".join(self.VOCAB[i] for i in ids)


def test_training_values_are_also_made_of_the_tokenizers_word_pieces_and_stay_disjoint():
    pieces = demo_chat.word_pieces(PieceTokenizer())  # letters alone, without the space, lower-cased, once each
    assert pieces == ("ab", "andle", "ing", "ion", "set", "teal", "the", "umber", "x", "zebulon")
    train = demo_chat.training_conversations(3000, seed=11, tokenizer=PieceTokenizer())
    assert train == demo_chat.training_conversations(3000, seed=11, tokenizer=PieceTokenizer())
    said = " ".join(m["content"] for c in train for m in c["messages"])
    for piece in ("set", "the", "ing", "umber", "andle", "ion"):  # each becomes part of words to copy
        assert len(re.findall(rf"(?i){piece}[a-z]", said)) > 50, piece
    values = stated_values(train)
    assert all(value_split(v) in ("train", None) for v in values)
    assert "teal" not in values and "zebulon" not in values  # a piece that is a held-out value alone is never stated
    assert any("teal" in v for v in values) and any(v.startswith("zebulon") for v in values)  # inside another word it may be


def test_the_held_out_split_never_shares_a_conversation_with_training():
    train = make_conversations(6000, seed=9)
    heldout = make_conversations(3000, seed=9, split="heldout")
    seen = {json.dumps(c["messages"]) for c in train}
    assert not any(json.dumps(c["messages"]) in seen for c in heldout)
    # by construction: every held-out conversation states a held-out fact, a user message no training conversation holds
    train_messages = {m["content"] for c in train for m in c["messages"]}
    for conversation in heldout:
        stated = [user_turns(conversation)[i] for i, _, _ in statements(conversation)]
        assert stated and not any(text in train_messages for text in stated)
    # while the same seed's training conversations do repeat (a short sum comes up again)
    assert any(json.dumps(c["messages"]) in seen for c in make_conversations(600, seed=10))


def test_unknown_split_is_a_usage_error_naming_the_splits():
    with pytest.raises(UsageError, match="'test'.*train, heldout"):
        make_conversations(10, seed=0, split="test")


# --- the other kinds -------------------------------------------------------------------------------------------------


def test_arithmetic_answers_are_right():
    seen_ops = set()
    for conversation in make_conversations(300, seed=5, kinds=["arithmetic"]):
        _, answer = split_prompt_answer(conversation)
        a, op, b, result = re.fullmatch(r"(\d) (plus|minus) (\d) is (\d+)\.", answer).groups()
        assert int(result) == (int(a) + int(b) if op == "plus" else int(a) - int(b))
        seen_ops.add(op)
    assert seen_ops == {"plus", "minus"}


def test_next_day_wraps_around_the_week_and_the_year():
    answers = {split_prompt_answer(c)[1] for c in make_conversations(400, seed=6, kinds=["next_day"])}
    assert "Monday comes after Sunday." in answers
    assert "January comes after December." in answers
    assert "Wednesday comes after Tuesday." in answers and "June comes after May." in answers
    assert len(answers) == len(DAYS) + len(MONTHS)  # every day and month gets asked


def test_repeat_echoes_exactly():
    lengths = set()
    for conversation in make_conversations(300, seed=7, kinds=["repeat"]):
        prompt, answer = split_prompt_answer(conversation)
        words = prompt[-1]["content"].removeprefix("Repeat after me: ")
        assert answer == f"You said: {words}."  # the first word after a space, as in the request: the same tokens
        lengths.add(len(words.split()))
    assert lengths == {2, 3, 4}


def test_other_kinds_have_up_to_three_earlier_turns_sometimes_a_fact():
    for split, with_fact in (("train", (0.2, 0.4)), ("heldout", (1.0, 1.0))):
        conversations = make_conversations(600, seed=8, kinds=["arithmetic", "next_day", "repeat"], split=split)
        turns = Counter(len(user_turns(c)) for c in conversations)
        assert set(turns) == ({1, 2, 3, 4} if split == "train" else {2, 3, 4})
        share = sum(bool(statements(c)) for c in conversations) / len(conversations)
        assert with_fact[0] <= share <= with_fact[1]
        assert all(len(statements(c)) <= 1 for c in conversations)


def test_kinds_are_cycled_evenly():
    counts = Counter(c["kind"] for c in make_conversations(1000, seed=0))
    assert counts == {kind: 250 for kind in CONVERSATION_KINDS}
    counts = Counter(c["kind"] for c in make_conversations(7, seed=0, kinds=["repeat", "arithmetic"]))
    assert counts == {"repeat": 4, "arithmetic": 3}


def test_unknown_kind_is_a_usage_error_naming_the_kinds():
    with pytest.raises(UsageError, match="'poetry'.*recall, arithmetic, next_day, repeat"):
        make_conversations(10, seed=0, kinds=["recall", "poetry"])
    with pytest.raises(UsageError, match="recall, arithmetic"):
        make_conversation(random.Random(0), "poetry")


# --- the script ------------------------------------------------------------------------------------------------------


def test_cli_writes_jsonl_that_round_trips(tmp_path):
    out = tmp_path / "chat.jsonl"
    result = run_script("data/synthetic_chat.py", f"--out={out}", "--n=41", "--seed=9", "--kinds=recall,arithmetic")
    assert result.returncode == 0, result.stderr
    assert "wrote 41 train conversations" in result.stdout and "recall 21" in result.stdout and "arithmetic 20" in result.stdout
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == make_conversations(41, seed=9, kinds=["recall", "arithmetic"])
    assert [p.name for p in tmp_path.iterdir()] == ["chat.jsonl"]  # no temporary file left behind
    held = tmp_path / "held.jsonl"
    result = run_script("data/synthetic_chat.py", f"--out={held}", "--n=12", "--seed=9", "--split=heldout", "--max_gap=3")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in held.read_text(encoding="utf-8").splitlines()] == make_conversations(12, 9, split="heldout", max_gap=3)


def test_cli_help_and_one_line_errors(tmp_path):
    result = run_script("-m", "data.synthetic_chat", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--out=", "--n=", "--seed=", "--kinds=", "--split=", "--max_gap="):
        assert option in result.stdout
    bad = run_script("-m", "data.synthetic_chat", f"--out={tmp_path / 'x.jsonl'}", "--kinds=recall,poetry")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "recall, arithmetic, next_day, repeat" in bad.stderr
    assert not (tmp_path / "x.jsonl").exists()
    bad = run_script("-m", "data.synthetic_chat", f"--out={tmp_path / 'x.jsonl'}", "--split=test")
    assert bad.returncode == 2 and "heldout" in bad.stderr and "Traceback" not in bad.stderr
