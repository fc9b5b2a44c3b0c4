"""Synthetic chat data: well-formed conversations whose final answers an independent checker agrees with."""
import json
import random
import re
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gptkit.demo_chat import CONVERSATION_KINDS, make_conversation, make_conversations, split_prompt_answer
from gptkit.errors import UsageError
from helpers import run_script

DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = "January February March April May June July August September October November December".split()
STATEMENTS = {  # statement pattern -> (question, answer template)
    r"My name is (\w+)\.": ("What is my name?", "Your name is {}."),
    r"My favourite colour is (\w+)\.": ("What is my favourite colour?", "Your favourite colour is {}."),
    r"My lucky number is (\d+)\.": ("What is my lucky number?", "Your lucky number is {}."),
    r"I live in (\w+)\.": ("Where do I live?", "You live in {}."),
}


def user_turns(conversation):
    return [m["content"] for m in conversation["messages"] if m["role"] == "user"]


def stated_fact(conversation):
    """(fact, question, answer template) parsed from a recall conversation's first user turn."""
    first = user_turns(conversation)[0]
    for pattern, (question, answer) in STATEMENTS.items():
        match = re.fullmatch(pattern, first)
        if match:
            return match.group(1), question, answer
    raise AssertionError(f"not a fact statement: {first!r}")


def expected_answer(conversation):
    """The right final answer, worked out from the prompt alone, without the generator's code."""
    prompt, _ = split_prompt_answer(conversation)
    question = prompt[-1]["content"]
    if conversation["kind"] == "recall":
        fact, asked, answer = stated_fact(conversation)
        assert question == asked
        return answer.format(fact)
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
        return match.group(1)
    raise AssertionError(f"unrecognised question {question!r}")


KIND_OF_QUESTION = (("arithmetic", r"What is \d (plus|minus) \d\?"), ("next_day", r"What (day|month) comes after \w+\?"), ("repeat", r"Repeat after me: .+"))


def assert_well_formed(conversation):
    assert set(conversation) == {"kind", "messages"} and conversation["kind"] in CONVERSATION_KINDS
    messages = conversation["messages"]
    assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) and m["content"] for m in messages)
    roles = [m["role"] for m in messages]
    if roles[0] == "system":
        roles = roles[1:]
    assert roles and len(roles) % 2 == 0
    assert roles == ["user", "assistant"] * (len(roles) // 2)
    assert sum(len(m["content"]) for m in messages) <= 400  # fits a 256-token context
    last_question = [m["content"] for m in messages if m["role"] == "user"][-1]
    if conversation["kind"] != "recall":
        assert re.fullmatch(dict(KIND_OF_QUESTION)[conversation["kind"]], last_question)


def test_same_seed_same_conversations_other_seed_different():
    assert make_conversations(50, seed=3) == make_conversations(50, seed=3)
    assert make_conversations(50, seed=3) != make_conversations(50, seed=4)


def test_every_conversation_is_well_formed_and_correctly_answered():
    conversations = make_conversations(2000, seed=0)
    for conversation in conversations:
        assert_well_formed(conversation)
        prompt, answer = split_prompt_answer(conversation)
        assert prompt == conversation["messages"][:-1]
        assert answer == expected_answer(conversation)
    with_system = sum(c["messages"][0]["role"] == "system" for c in conversations) / len(conversations)
    assert 0.25 < with_system < 0.42  # about a third


@given(st.integers(0, 2**63), st.sampled_from(CONVERSATION_KINDS))
def test_any_seed_gives_well_formed_correct_conversations(seed, kind):
    conversation = make_conversation(random.Random(seed), kind)
    assert_well_formed(conversation)
    assert conversation["kind"] == kind
    assert split_prompt_answer(conversation)[1] == expected_answer(conversation)


def test_recall_fact_is_stated_once_and_only_in_the_first_user_turn():
    conversations = make_conversations(1200, seed=1, kinds=["recall"])
    questions = Counter()
    for conversation in conversations:
        fact, question, _ = stated_fact(conversation)
        _, answer = split_prompt_answer(conversation)
        assert fact.lower() in words(answer)
        users = user_turns(conversation)
        assert 3 <= len(users) <= 5  # statement, 1-3 distractors, question
        for text in users[1:-1]:
            assert any(re.fullmatch(pattern, text) for _, pattern in KIND_OF_QUESTION)
        replies = [m["content"] for m in conversation["messages"] if m["role"] == "assistant"]
        for text in users[1:] + replies[1:-1]:  # only the statement, its acknowledgement and the answer mention it
            assert fact.lower() not in words(text), (fact, text)
        questions[question] += 1
    assert len(questions) == 4 and min(questions.values()) > 200  # all four fact types, roughly evenly


def words(text):
    return re.findall(r"\w+", text.lower())


def test_recall_facts_vary():
    facts = Counter(stated_fact(c)[0] for c in make_conversations(800, seed=2, kinds=["recall"]))
    assert len(facts) > 100  # names, colours, numbers and cities, not a handful


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
        assert prompt[-1]["content"] == f"Repeat after me: {answer}"
        lengths.add(len(answer.split()))
    assert lengths == {2, 3, 4}


def test_non_recall_conversations_have_one_to_three_turns():
    turns = Counter(len(user_turns(c)) for c in make_conversations(600, seed=8, kinds=["arithmetic", "next_day", "repeat"]))
    assert set(turns) == {1, 2, 3}


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


def test_cli_writes_jsonl_that_round_trips(tmp_path):
    out = tmp_path / "chat.jsonl"
    result = run_script("data/synthetic_chat.py", f"--out={out}", "--n=41", "--seed=9", "--kinds=recall,arithmetic")
    assert result.returncode == 0, result.stderr
    assert "wrote 41 conversations" in result.stdout and "recall 21" in result.stdout and "arithmetic 20" in result.stdout
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == make_conversations(41, seed=9, kinds=["recall", "arithmetic"])
    assert [p.name for p in tmp_path.iterdir()] == ["chat.jsonl"]  # no temporary file left behind


def test_cli_help_and_one_line_errors(tmp_path):
    result = run_script("-m", "data.synthetic_chat", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--out=", "--n=", "--seed=", "--kinds="):
        assert option in result.stdout
    bad = run_script("-m", "data.synthetic_chat", f"--out={tmp_path / 'x.jsonl'}", "--kinds=recall,poetry")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "recall, arithmetic, next_day, repeat" in bad.stderr
    assert not (tmp_path / "x.jsonl").exists()
