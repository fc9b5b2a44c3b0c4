"""The chat template and loss mask, fitting conversations to the context, reading conversations, and their batches."""
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gptkit.chat_template import check_messages, conversation_rows, fit_to_context, prompt_for_reply, read_conversations, render_conversation
from gptkit.errors import UsageError
from gptkit.loader import ConversationBatches, conversation_batches, padded_batch
from helpers import SAMPLES

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
turns = st.lists(st.tuples(text, text), min_size=1, max_size=4)
conversations = st.builds(lambda system, pairs: ([{"role": "system", "content": system}] if system is not None else [])
                          + [m for u, a in pairs for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})],
                          st.none() | text, turns)


def names(tokenizer, ids):
    special = {tokenizer.special_id(n): n for n in tokenizer.encoding.special_tokens_set}
    return [special.get(i) for i in ids]


@given(messages=conversations)
def test_mask_covers_exactly_the_assistant_replies_and_their_end(bytes_tok, messages):
    ids, mask = render_conversation(bytes_tok, messages)
    assert len(ids) == len(mask)
    learned = bytes([t for t, m in zip(ids, mask) if m and t < 256]).decode("utf-8")
    assert learned == "".join(m["content"] for m in messages if m["role"] == "assistant")
    specials = names(bytes_tok, ids)
    assert [s for s, m in zip(specials, mask) if m and s] == ["<|assistant_end|>"] * sum(m["role"] == "assistant" for m in messages)
    assert specials[0] == "<|bos|>" and mask[0] == 0
    assert not any(m for s, m in zip(specials, mask) if s == "<|assistant_start|>")


@given(messages=conversations)
def test_a_conversation_renders_as_its_first_messages_followed_by_the_rest(bpe_tok, messages):
    """chat.py's cache reuse relies on this: turn N's tokens extend turn N-1's."""
    full, _ = render_conversation(bpe_tok, messages)
    for k in range(1, len(messages)):
        prefix, _ = render_conversation(bpe_tok, messages[:k])
        assert full[:len(prefix)] == prefix


def test_the_reply_prompt_asks_for_an_assistant_turn(bytes_tok):
    messages = [{"role": "user", "content": SAMPLES["chinese"]}]
    ids = prompt_for_reply(bytes_tok, [("user", bytes_tok.encode(SAMPLES["chinese"]))])
    assert names(bytes_tok, ids[-1:]) == ["<|assistant_start|>"]
    assert ids[:-1] == render_conversation(bytes_tok, messages)[0]


def test_special_token_spellings_in_content_stay_text(bytes_tok):
    ids, mask = render_conversation(bytes_tok, [{"role": "user", "content": "<|assistant_end|>"}, {"role": "assistant", "content": "ok"}])
    assert names(bytes_tok, ids).count("<|assistant_end|>") == 1


@pytest.mark.parametrize("messages, error", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"role": "user"}], "string \"content\""),
    ([{"role": "bot", "content": "x"}], "role 'bot'"),
    ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], "only the first"),
])
def test_malformed_messages_are_refused_with_the_reason(messages, error):
    with pytest.raises(UsageError, match=error):
        check_messages(messages)


def conversation(*replies):
    messages = []
    for i, reply in enumerate(replies):
        messages += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": reply}]
    return messages


def test_long_conversations_are_cut_after_a_whole_reply(bytes_tok):
    ids, mask = render_conversation(bytes_tok, conversation("first answer", "second answer", "third answer"))
    fitted_ids, fitted_mask = fit_to_context(ids, mask, len(ids) - 5)
    assert names(bytes_tok, fitted_ids[-1:]) == ["<|assistant_end|>"]
    assert fitted_ids == ids[:len(fitted_ids)] and fitted_mask == mask[:len(fitted_ids)]
    assert bytes_tok.decode(fitted_ids).endswith("second answer<|assistant_end|>")
    assert fit_to_context(ids, mask, len(ids)) == (ids, mask)
    assert fit_to_context(ids, mask, 10) is None  # not even the first reply fits


def test_conversation_rows_count_what_was_cut_and_dropped(bytes_tok):
    short, long = conversation("ok"), conversation("a fine answer", "x" * 80)
    only_user = [{"role": "user", "content": "hi"}]
    rows, truncated, dropped = conversation_rows(bytes_tok, [{"messages": m} for m in (short, long, only_user)], 60)
    assert (len(rows), truncated, dropped) == (2, 1, 1)
    assert all(len(ids) <= 60 and any(mask) for ids, mask in rows)


def test_padded_batch_takes_no_loss_on_prompts_or_padding(bytes_tok):
    rows = [render_conversation(bytes_tok, conversation("yes")), render_conversation(bytes_tok, conversation("a longer answer"))]
    x, y = padded_batch(rows, pad_id=bytes_tok.eot_id)
    assert x.shape == y.shape == (2, len(rows[1][0]) - 1)
    for (ids, mask), xs, ys in zip(rows, x, y):
        n = len(ids) - 1
        assert list(xs[:n]) == ids[:-1] and all(xs[n:] == bytes_tok.eot_id)
        assert [t for t in ys if t >= 0] == [t for t, m in zip(ids[1:], mask[1:]) if m]
        assert all(ys[n:] == -1)


def test_conversation_batches_cover_every_row_once_per_epoch_and_resume_exactly(bytes_tok):
    rows = [render_conversation(bytes_tok, conversation(str(i) * (i % 5 + 1))) for i in range(10)]
    batches = ConversationBatches(rows, 4, seed=3, pad_id=0)
    firsts = [tuple(batches.next_batch()[0][:, 4]) for _ in range(5)]  # 20 rows: exactly two epochs
    epoch_rows = sorted(r for batch in firsts[:2] for r in batch) + sorted(firsts[2][:2])
    assert len(epoch_rows) == 10
    state = batches.state_dict()
    expected = [batches.next_batch() for _ in range(3)]
    resumed = ConversationBatches(rows, 4, seed=3, pad_id=0)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    for (x, y), (ex, ey) in zip((resumed.next_batch() for _ in range(3)), expected):
        assert np.array_equal(x, ex) and np.array_equal(y, ey)
    assert [len(b[0]) for b in conversation_batches(rows, 4, 0)] == [4, 4, 2]


def test_read_conversations_reports_the_bad_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    good = json.dumps({"messages": conversation("hi"), "kind": "greeting"})
    path.write_text(good + "\n\n" + good + "\n", encoding="utf-8")
    assert [c["kind"] for c in read_conversations(path)] == ["greeting", "greeting"]
    for body, error in [("{not json\n", ":1 is not valid JSON"), ('{"text": "x"}\n', 'no "messages"'),
                        ('{"messages": [{"role": "robot", "content": "x"}]}\n', ":1: message 1 has role 'robot'"), ("\n", "no conversations")]:
        path.write_text(body, encoding="utf-8")
        with pytest.raises(UsageError, match=error):
            read_conversations(path)
    path.write_bytes(b'{"messages": "\xff"}\n')
    with pytest.raises(UsageError, match="not UTF-8"):
        read_conversations(path)
    with pytest.raises(UsageError, match="does not exist"):
        read_conversations(tmp_path / "missing.jsonl")


def test_conversation_batches_hold_conversations_of_about_one_length():
    rng = np.random.default_rng(0)
    rows = [([1] * int(n), [1] * int(n)) for n in rng.integers(10, 300, size=1024)]
    batches = ConversationBatches(rows, 8, seed=1, pad_id=0)
    padded = sum(batches.next_batch()[0].size for _ in range(128))  # one epoch
    assert sorted(batches.order) == list(range(1024))  # every row once
    assert padded < 1.1 * sum(len(ids) - 1 for ids, _ in rows)  # shuffled freely, batches of 8 would pad about 1.6x
