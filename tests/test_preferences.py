"""Preference pairs and RL prompts: the three record shapes, bad rows reported by line, and the tokens the objectives see."""
import json

import pytest

from gptkit.chat_template import prompt_for_reply, render_conversation
from gptkit.errors import UsageError
from gptkit.preferences import Pair, dataset_pairs, pair_ids, parse_pair, prompt_row, read_pairs, read_prompts

SYSTEMLESS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "name a fruit"}]
EXPLICIT = {"prompt": SYSTEMLESS, "chosen": [{"role": "assistant", "content": "an apple"}], "rejected": "a brick"}
IMPLICIT = {"chosen": SYSTEMLESS + [{"role": "assistant", "content": "an apple"}], "rejected": SYSTEMLESS + [{"role": "assistant", "content": "a brick"}]}
HH = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: name a fruit\n\nAssistant: an apple",
      "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman:  name a fruit \n\nAssistant: a brick"}


def write_jsonl(path, rows):
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("record", [EXPLICIT, IMPLICIT, HH], ids=["explicit", "implicit", "hh"])
def test_the_three_shapes_give_the_same_pair(record):
    assert parse_pair(record, "here") == Pair(SYSTEMLESS, "an apple", "a brick", "here")


def test_a_string_prompt_is_one_user_message():
    pair = parse_pair({"prompt": "name a fruit", "chosen": "an apple", "rejected": "a brick"}, "x")
    assert pair.prompt == [{"role": "user", "content": "name a fruit"}]


@pytest.mark.parametrize("record, reason", [
    (["not", "an", "object"], "not a JSON object"),
    ({"prompt": "q", "chosen": "a"}, "no 'rejected' field"),
    ({"prompt": "q", "chosen": "a", "rejected": 3}, "rejected must be text"),
    ({"chosen": "just text", "rejected": ["a list"]}, "both as text or both as message lists"),
    ({"prompt": SYSTEMLESS[:2], "chosen": "a", "rejected": "b"}, "must end with the user's message"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "nothing to learn"),
    ({"prompt": "q", "chosen": "a", "rejected": "  "}, "rejected reply is empty"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "last message must be the assistant's"),
    ({**IMPLICIT, "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]}, "same conversation"),
    ({**HH, "rejected": "\n\nHuman: something else\n\nAssistant: b"}, "same conversation"),
    ({**HH, "rejected": "no markers at all"}, "no \"\\n\\nHuman:\""),
    ({"prompt": [{"role": "human", "content": "q"}], "chosen": "a", "rejected": "b"}, "has role 'human'"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
      "chosen": "a", "rejected": "b"}, "only the first message may be one"),
])
def test_a_bad_record_says_why(record, reason):
    with pytest.raises(ValueError) as info:
        parse_pair(record, "x")
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_bad_rows_are_reported_by_line_and_the_good_ones_kept(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [EXPLICIT, "{not json", "", {"prompt": "q", "chosen": "a", "rejected": "a"}, HH])
    pairs, bad = read_pairs(path)
    assert [p.where for p in pairs] == [f"{path}:1", f"{path}:5"]
    assert [line.split(": ")[0] for line in bad] == [f"{path}:2", f"{path}:4"]  # the blank line 3 is neither
    assert "not valid JSON" in bad[0] and "nothing to learn" in bad[1]


@pytest.mark.parametrize("content, message", [(None, "does not exist"), ("dir", "is a folder"), (b"\xff\xfe{}", "not UTF-8"),
                                              ("", "it is empty"), ('{"chosen": "a"}\n[1]\n', "2 unusable row(s)")])
def test_a_file_without_usable_pairs_is_a_one_line_usage_error(tmp_path, content, message):
    path = tmp_path / "pairs.jsonl"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError) as info:
        read_pairs(path)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("tok", ["bytes_tok", "bpe_tok"])
def test_pair_ids_render_as_the_conversation_would(request, tok):
    tokenizer = request.getfixturevalue(tok)
    pair = Pair([{"role": "system", "content": "be brief"}, *SYSTEMLESS], "an apple", "a brick", "x")
    prompt_ids, chosen_ids, rejected_ids = pair_ids(tokenizer, pair)
    start, end = tokenizer.special_id("<|assistant_start|>"), tokenizer.special_id("<|assistant_end|>")
    assert prompt_ids[-1] == start and chosen_ids[-1] == end and rejected_ids[-1] == end
    # Tokenized apart: the prompt's ids do not depend on the reply, and each reply's ids are its text's alone.
    assert prompt_ids == prompt_for_reply(tokenizer, [(m["role"], tokenizer.encode(m["content"])) for m in pair.prompt])
    assert chosen_ids == tokenizer.encode("an apple") + [end] and rejected_ids == tokenizer.encode("a brick") + [end]
    # So prompt + reply is exactly the tokens fine-tuning trained on for the same conversation.
    whole, mask = render_conversation(tokenizer, [*pair.prompt, {"role": "assistant", "content": "an apple"}])
    assert prompt_ids + chosen_ids == whole and mask[len(prompt_ids):] == [1] * len(chosen_ids)


def test_read_prompts_keeps_extra_fields_in_both_shapes(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [
        {"prompt": "2+2?", "answer": "4"},
        {"messages": [{"role": "system", "content": "math"}, {"role": "user", "content": "3+3?"}], "answer": "6", "level": 1},
        {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "reference": "b"},
        {"answer": "no prompt"},
        {"prompt": SYSTEMLESS[:2]},
    ])
    rows, bad = read_prompts(path)
    assert [(r.prompt[-1]["content"], r.fields) for r in rows] == [("2+2?", {"answer": "4"}), ("3+3?", {"answer": "6", "level": 1}),
                                                                   ("1+1?", {"reference": "2"})]
    assert rows[1].prompt[0] == {"role": "system", "content": "math"} and rows[2].prompt == [{"role": "user", "content": "1+1?"}]
    assert [b.split(": ")[0] for b in bad] == [f"{path}:4", f"{path}:5", f"{path}:6"]
    assert "keep one of them" in bad[0] and 'no "prompt" or "messages"' in bad[1] and "must end with the user's" in bad[2]


def test_prompt_row_of_a_bare_assistant_message_is_refused():
    with pytest.raises(ValueError, match="only an assistant message"):
        prompt_row({"messages": [{"role": "assistant", "content": "a"}]}, "x")


def test_dataset_pairs_from_a_local_hugging_face_folder(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "hf_prefs"
    folder.mkdir()
    bad_row = {"prompt": "q", "chosen": "same", "rejected": "same"}
    write_jsonl(folder / "train.jsonl", [{"prompt": "name a fruit", "chosen": "an apple", "rejected": "a brick"}, bad_row,
                                         {"prompt": "name a colour", "chosen": "red", "rejected": "a brick"}])
    pairs, bad = dataset_pairs(str(folder))
    assert [(p.prompt[-1]["content"], p.chosen) for p in pairs] == [("name a fruit", "an apple"), ("name a colour", "red")]
    assert pairs[1].where == f"dataset {str(folder)!r} record 3" and len(bad) == 1
    assert bad[0].startswith(f"dataset {str(folder)!r} record 2: ") and "nothing to learn" in bad[0]
    with pytest.raises(UsageError, match="could not load dataset"):
        dataset_pairs(str(tmp_path / "absent"))
