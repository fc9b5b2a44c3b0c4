"""Scoring chat replies: only the whole expected reply counts (exact_reply, reply_accuracy), and bench/chat_accuracy.py
reports seen and unseen values by gap and ends with its one summary line."""
import re

import pytest

from gptkit.chat_session import exact_reply, reply_accuracy
from gptkit.checkpoint import save_checkpoint
from helpers import run_script
from test_chat import chat_model, fresh_reply


@pytest.mark.parametrize("got, expected, right", [
    ("Your name is Ann.", "Your name is Ann.", True),
    ("  Your name is Ann.\n", "Your name is Ann.", True),  # surrounding whitespace only
    ("Your name is Anna.", "Your name is Ann.", False),  # the value inside a longer word
    ("Your name is Ann.", "Your name is Anna.", False),  # a value cut short
    ("Your lucky number is 87.", "Your lucky number is 879.", False),
    ("Your lucky number is 8790.", "Your lucky number is 879.", False),
    ("Your name is Ann. Your name is Ann.", "Your name is Ann.", False),  # more than the reply
    ("your name is ann.", "Your name is Ann.", False),  # case counts
    ("Your name is Ann", "Your name is Ann.", False),
    (None, "Your name is Ann.", False),  # no reply (the prompt did not fit)
])
def test_exact_reply_takes_only_the_whole_reply(got, expected, right):
    assert exact_reply(got, expected) is right


@pytest.fixture(scope="module")
def model(bytes_tok):
    return chat_model(bytes_tok)


def test_reply_accuracy_counts_a_reply_containing_the_expected_one_as_wrong(bytes_tok, model):
    context = [{"role": "user", "content": "My name is Ann."}, {"role": "assistant", "content": "Nice to meet you, Ann."},
               {"role": "user", "content": "What is my name?"}]
    got = fresh_reply(model, bytes_tok, context, options=None).strip()
    assert len(got) >= 3

    def conversation(expected, fact):
        return {"kind": "recall", "fact": fact, "messages": context + [{"role": "assistant", "content": expected}]}

    conversations = [conversation(got, "exact"), conversation(got[:-1], "cut"), conversation(got[1:], "cut"), conversation(got + "a", "longer")]
    counts, _ = reply_accuracy(model, bytes_tok, conversations, max_new_tokens=12, labels=lambda c: [c["kind"], c["fact"]])
    assert counts == {"all": (1, 4), "recall": (1, 4), "exact": (1, 1), "cut": (0, 2), "longer": (0, 1)}


def test_bench_reports_seen_and_unseen_by_gap_and_ends_with_the_summary(tmp_path, bytes_tok):
    ckpt = tmp_path / "chat.pt"
    seed = 1  # one whose 24 conversations include some of the training set's (about 1 in 10 do, by chance)
    # trained (as its config says) on 3,000 demo conversations of the bench's own seed: some seen-value ones recur
    save_checkpoint(ckpt, chat_model(bytes_tok, block_size=384), bytes_tok, chat_tuned=True,
                    train_config={"chat_data": "demo", "demo_conversations": 3000, "seed": seed})
    result = run_script("bench/chat_accuracy.py", f"--ckpt={ckpt}", "--n=24", f"--seed={seed}", "--device=cpu", "--dtype=float32")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("machine: ")
    summary = re.fullmatch(r"chat_accuracy: seen=(\d\.\d\d) unseen=(\d\.\d\d) long_gap=(\d\.\d\d|n/a)", lines[-1])
    assert summary, lines[-1]
    recall = next(line for line in lines[lines.index("every kind:"):] if line.split()[:1] == ["recall"])
    (seen_right, seen_total), (unseen_right, unseen_total) = [map(int, m) for m in re.findall(r"\((\d+)/(\d+)\)", recall)]
    assert float(summary.group(1)) == round(seen_right / seen_total, 2) and float(summary.group(2)) == round(unseen_right / unseen_total, 2)
    assert lines[-2] == f"reproduce: python bench/chat_accuracy.py --ckpt={ckpt} --n=24 --seed={seed} --device=cpu --dtype=float32"
    seen = next(line for line in lines if line.startswith("seen values:"))
    unseen = next(line for line in lines if line.startswith("unseen values:"))
    in_training = re.search(r"\((\d+) left out as in the training set", seen)
    assert int(in_training.group(1)) > 0  # short seen-value conversations recur in a training set of the same seed
    assert "(0 left out as in the training set" in unseen  # an unseen-value conversation never does
    too_long = int(re.search(r", (\d+) as longer than the context", unseen).group(1))
    assert too_long > 0  # a byte-level model's 384 tokens hold few long conversations: counted, not scored
    for bucket in ("0-1", "2-3", "4-5", "6-7"):
        assert any(line.split()[:1] == [bucket] for line in lines), bucket
    for fact in ("name", "number", "colour", "city", "pet", "password", "date", "list"):
        assert any(line.split()[:1] == [fact] for line in lines), fact
