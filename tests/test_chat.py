"""Chatting with a checkpoint: ChatSession (the KV cache kept across turns, edits, context overflow, stop strings,
a stopped reply), reply_accuracy, and the chat.py REPL driven through a pipe as a script would drive it.

The model is a tiny random one whose greedy replies are printable ASCII on one line, so a reply can be compared
exactly with what a fresh session (new Engine, empty cache) says to the same conversation.
"""
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from gptkit.chat_session import ChatSession, reply_accuracy
from gptkit.checkpoint import save_checkpoint
from gptkit.engine import SamplingOptions
from gptkit.errors import UsageError
from helpers import REPO, tiny_model

MAX_NEW = 12


def chat_model(tokenizer, block_size=256, seed=5, **config):
    """A tiny model whose greedy replies are printable ASCII, some ending with <|assistant_end|> before MAX_NEW.

    The output rows of all other tokens are zeroed (a logit of 0 loses to the best of ~95 random ones), and
    <|assistant_end|> takes over the row of "K": a reply ends where it would have said K.
    """
    vocab = -(-tokenizer.n_vocab // 16) * 16
    model = tiny_model("modern", vocab_size=vocab, block_size=block_size, n_embd=32, scale=0.5, seed=seed, **config)
    specials = {tokenizer.special_id(name) for name in tokenizer.encoding.special_tokens_set}
    keep = torch.zeros(vocab, dtype=torch.bool)
    for i in range(tokenizer.n_vocab):
        keep[i] = i not in specials and all(32 <= b < 127 for b in tokenizer.decode_bytes([i]))
    with torch.no_grad():
        weight = model.lm_head.weight
        weight[~keep] = 0
        weight[tokenizer.special_id("<|assistant_end|>")] = 1.05 * weight[tokenizer.encode("K")[0]]
    return model


def greedy(**options):
    return SamplingOptions(**{"temperature": 0.0, "max_new_tokens": MAX_NEW, **options})


def say(session, text):
    return "".join(session.respond(text))


def history(session):
    """The conversation the last reply answered."""
    return session.plain_messages()[:-1]


def fresh_reply(model, tokenizer, messages, options=None):
    """What a new session (new Engine, empty cache) replies to plain messages."""
    session = ChatSession(model, tokenizer, options or greedy())
    session.load(messages)
    return "".join(session.reply())


def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@pytest.fixture(scope="module")
def model(bytes_tok):
    return chat_model(bytes_tok)


# --- ChatSession: the KV cache across turns -------------------------------------------------------------------


def test_each_turn_prefills_only_its_new_tokens_and_replies_as_a_fresh_session_would(bytes_tok, model):
    session = ChatSession(model, bytes_tok, greedy(), system_prompt="be brief")
    previous, replies = None, []
    for question in ["hello", "how are you today?", "tell me about the moon", "and the sun?"]:
        reply = say(session, question)
        stats, prompt = session.stats, session.render(session.messages[:-1])
        assert stats["dropped_turns"] == 0 and stats["prompt_tokens"] == len(prompt)
        assert stats["prefilled"] == len(prompt) - stats["reused"]
        assert reply == fresh_reply(model, bytes_tok, history(session))
        if previous is None:
            assert stats["reused"] == 0
        else:  # the cache held the last prompt and the reply fed to it; only the rest runs through the model
            prompt_tokens, reply_ids = previous
            assert stats["reused"] == prompt_tokens + len(reply_ids)
            # <|assistant_end|> <|user_start|> question <|user_end|> <|assistant_start|>
            assert stats["prefilled"] == len(bytes_tok.encode(question)) + 4
        previous = stats["prompt_tokens"], session.messages[-1]["ids"]
        replies.append(reply)
    assert session.stats["prefilled"] < session.stats["prompt_tokens"] // 4  # a later turn costs a small part of its prompt
    assert len(set(replies)) == len(replies)  # the replies depend on the conversation: the comparisons above mean something
    assert any(len(r) < MAX_NEW for r in replies) and any(len(r) == MAX_NEW for r in replies)  # ended and cut replies both reuse


def test_the_cache_is_reused_across_turns_with_a_bpe_tokenizer(bpe_tok):
    # (a BPE reply's tokens need not be its text's own encoding, so a fresh session's reply is not compared here)
    model = chat_model(bpe_tok, block_size=128)
    session = ChatSession(model, bpe_tok, greedy())
    previous = None
    for question in ["the cat sees the fish", "a dog likes the moon", "our teacher writes to the queen"]:
        say(session, question)
        stats = session.stats
        assert stats["prefilled"] == stats["prompt_tokens"] - stats["reused"]
        if previous:
            assert stats["reused"] == previous[0] + len(previous[1])
            assert stats["prefilled"] == len(bpe_tok.encode(question)) + 4
        previous = stats["prompt_tokens"], session.messages[-1]["ids"]


def test_undo_and_a_new_system_prompt_invalidate_only_what_changed(bytes_tok, model):
    session = ChatSession(model, bytes_tok, greedy(), system_prompt="be brief")
    say(session, "hello")
    first_turn = len(session.render()) - 1  # through the first reply's <|assistant_end|>
    say(session, "what is the moon?")
    assert session.undo()
    cached = list(session.engine.cached_ids)
    reply = say(session, "what is the sun?")
    prompt = session.render(session.messages[:-1])
    # the first turn, <|user_start|> and "what is the " stay in the cache
    assert session.stats["reused"] == common_prefix(cached, prompt) == first_turn + 1 + len("what is the ")
    assert reply == fresh_reply(model, bytes_tok, history(session))

    session.set_system("be kind")
    cached = list(session.engine.cached_ids)
    reply = say(session, "and the stars?")
    prompt = session.render(session.messages[:-1])
    assert session.stats["reused"] == common_prefix(cached, prompt) == 2 + len("be ")  # <|bos|> <|system_start|> "be "
    assert reply == fresh_reply(model, bytes_tok, history(session))
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]


def test_retry_replaces_the_last_reply_undo_removes_a_turn_and_reset_keeps_the_system_prompt(bytes_tok, model):
    session = ChatSession(model, bytes_tok, greedy(), system_prompt="be brief")
    assert session.retry() is None and session.undo() is False
    first = say(session, "hello")
    second = say(session, "how are you?")
    count = len(session.messages)
    assert "".join(session.retry()) == second
    assert len(session.messages) == count and session.messages[-1]["content"] == second
    assert session.stats["prefilled"] == 1  # the prompt is all in the cache; its last token runs for the logits
    assert session.undo()
    assert session.plain_messages() == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
                                        {"role": "assistant", "content": first}]
    session.reset()
    assert session.plain_messages() == [{"role": "system", "content": "be brief"}]
    assert say(session, "how are you?") == fresh_reply(model, bytes_tok, history(session))


def test_the_same_seed_gives_the_same_sampled_reply(bytes_tok):
    model = tiny_model("modern", vocab_size=272, block_size=128, n_embd=32, scale=0.5)
    options = SamplingOptions(temperature=1.0, max_new_tokens=MAX_NEW, seed=7)
    replies = [say(ChatSession(model, bytes_tok, options), "hello") for _ in range(2)]
    assert replies[0] == replies[1]


def test_retry_at_a_positive_temperature_draws_a_new_reply(bytes_tok):
    model = tiny_model("modern", vocab_size=272, block_size=128, n_embd=32, scale=0.5)
    session = ChatSession(model, bytes_tok, SamplingOptions(temperature=1.0, max_new_tokens=MAX_NEW, seed=7))
    first = say(session, "hello")
    assert "".join(session.retry()) != first


# --- ChatSession: the context ---------------------------------------------------------------------------------


def test_a_long_conversation_drops_its_oldest_turns_and_keeps_the_system_prompt(bytes_tok):
    model, options = chat_model(bytes_tok, block_size=64), greedy(max_new_tokens=8)
    session = ChatSession(model, bytes_tok, options, system_prompt="be brief")
    limit = 64 - session.reply_room()
    questions = [f"question number {i}" for i in range(8)]
    dropped = 0
    for i, question in enumerate(questions):
        reply = say(session, question)
        dropped += session.stats["dropped_turns"]
        assert session.dropped_turns == dropped
        assert session.stats["prompt_tokens"] == len(session.render(session.messages[:-1])) <= limit
        assert session.messages[0] == session.message("system", "be brief")
        roles = [m["role"] for m in session.messages[1:]]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        users = [m["content"] for m in session.messages if m["role"] == "user"]
        assert users == questions[i + 1 - len(users):i + 1]  # the newest turns, in order
        assert reply == fresh_reply(model, bytes_tok, history(session), options)
    assert dropped > 0

    before = [dict(m) for m in session.messages]
    with pytest.raises(UsageError, match="shorten it"):
        session.respond("x" * 60)
    assert session.messages == before
    session.set_system("s" * 50)
    with pytest.raises(UsageError, match="with the system prompt"):
        session.respond("hi")
    assert session.messages[1:] == before[1:]
    session.set_system("be brief")
    assert say(session, "hi") == fresh_reply(model, bytes_tok, history(session), options)


# --- ChatSession: how a reply ends ----------------------------------------------------------------------------


def test_a_stop_string_ends_the_reply_before_it_and_the_shown_text_is_what_is_kept(bytes_tok, model):
    plain = say(ChatSession(model, bytes_tok, greedy()), "hello")
    stop = plain[5:7]
    cut = plain.index(stop)
    assert 0 < cut and len(plain) > cut + len(stop)  # the model's reply has text on both sides of the stop string

    options = greedy(stop=[stop])
    session = ChatSession(model, bytes_tok, options)
    shown = "".join(session.respond("hello"))
    assert shown == plain[:cut]
    assert session.messages[-1] == {"role": "assistant", "content": shown, "ids": bytes_tok.encode(shown)}
    following = say(session, "go on")
    assert stop not in following
    assert following == fresh_reply(model, bytes_tok, history(session), options)  # the next turn sees the reply as shown


def test_a_reply_stopped_early_is_kept_and_the_session_goes_on(bytes_tok, model):
    full = fresh_reply(model, bytes_tok, [{"role": "user", "content": "hello"}])
    session = ChatSession(model, bytes_tok, greedy())
    pieces = session.respond("hello")
    said = "".join(next(pieces) for _ in range(3))
    pieces.close()  # what the REPL does on Ctrl-C
    assert said == full[:len(said)] and len(said) < len(full)
    assert session.messages[-1] == {"role": "assistant", "content": said, "ids": bytes_tok.encode(said)}
    assert say(session, "go on") == fresh_reply(model, bytes_tok, history(session))
    assert session.stats["reused"] >= len(session.render(session.messages[:1]))  # the first prompt stayed in the cache


class Interrupt:
    """Raise KeyboardInterrupt in the second block's forward once armed, as Ctrl-C does in the middle of the model."""

    def __init__(self, model, prefill):
        self.armed, self.prefill = False, prefill
        self.handle = model.transformer.h[1].register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        if self.armed and (args[0].shape[1] > 1) == self.prefill:
            self.armed = False
            raise KeyboardInterrupt


def test_ctrl_c_in_the_middle_of_decoding_keeps_the_partial_reply(bytes_tok, model):
    session = ChatSession(model, bytes_tok, greedy())
    interrupt = Interrupt(model, prefill=False)
    try:
        pieces = session.respond("hello")
        said = next(pieces) + next(pieces)
        interrupt.armed = True
        with pytest.raises(KeyboardInterrupt):
            for piece in pieces:
                said += piece
        pieces.close()
    finally:
        interrupt.handle.remove()
    assert session.messages[-1]["content"] == said and said
    assert say(session, "go on") == fresh_reply(model, bytes_tok, history(session))


def test_ctrl_c_in_the_middle_of_a_prefill_leaves_the_cache_usable(bytes_tok, model):
    session = ChatSession(model, bytes_tok, greedy())
    say(session, "hi")
    say(session, "hello there")
    session.undo()
    interrupt = Interrupt(model, prefill=True)
    interrupt.armed = True
    try:
        with pytest.raises(KeyboardInterrupt):
            "".join(session.respond("zzzzzzzzzzzzzzzz"))
    finally:
        interrupt.handle.remove()
    session.undo()
    assert say(session, "hello there") == fresh_reply(model, bytes_tok, history(session))


# --- reply_accuracy -------------------------------------------------------------------------------------------


def test_reply_accuracy_counts_exact_replies_per_kind(bytes_tok, model):
    contexts = [[{"role": "user", "content": "hello"}],
                [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
                [{"role": "user", "content": "what?"}]]
    right = [fresh_reply(model, bytes_tok, context) for context in contexts]
    assert "nope" not in right

    def conversation(context, answer, kind=None):
        return {"messages": context + [{"role": "assistant", "content": answer}], **({"kind": kind} if kind else {})}

    conversations = [
        conversation(contexts[0], right[0], "recall"),
        conversation(contexts[1], f"  {right[1]}\n", "recall"),  # surrounding whitespace does not count
        conversation(contexts[2], right[2], "math"),
        conversation(contexts[3], "nope", "math"),
        conversation(contexts[0], "nope"),  # no kind: counts only in "all"
        conversation([{"role": "user", "content": "x" * 300}], "x", "math"),  # longer than the context: wrong, not an error
        {"messages": contexts[0]},  # no final assistant message: not counted
        {"messages": [{"role": "assistant", "content": right[0]}], "kind": "recall"},  # nothing to reply to: not counted
    ]
    counts, examples = reply_accuracy(model, bytes_tok, conversations, max_new_tokens=MAX_NEW)
    assert counts == {"all": (3, 6), "recall": (2, 2), "math": (1, 3)}
    assert ("what?", "nope", right[3]) in examples
    assert ("x" * 300, "x", None) in examples


# --- the REPL through a pipe ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model, bytes_tok):
    path = tmp_path_factory.mktemp("chat") / "chat.pt"
    save_checkpoint(path, model, bytes_tok, chat_tuned=True)
    return path


def chat(ckpt, stdin, *options, cwd=REPO, env=None):
    """Run chat.py at temperature 0 with stdin piped in; the replies are stdout's lines."""
    data = stdin if isinstance(stdin, bytes) else stdin.encode("utf-8")
    args = [f"--ckpt={ckpt}"] if ckpt else []
    result = subprocess.run([sys.executable, str(REPO / "chat.py"), *args, "--temperature=0", f"--max_new_tokens={MAX_NEW}", *options],
                            cwd=cwd, input=data, capture_output=True, timeout=120,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", **(env or {})})
    stdout, stderr = result.stdout.decode("utf-8"), result.stderr.decode("utf-8")
    assert stdout == "" or stdout.endswith("\n"), stdout
    return SimpleNamespace(rc=result.returncode, replies=stdout.split("\n")[:-1], stderr=stderr)


def replies_of(model, tokenizer, *turns, system=""):
    """What a session says to each message in turn; a turn that is a list of messages loads them instead."""
    session = ChatSession(model, tokenizer, greedy(), system)
    replies = []
    for turn in turns:
        if isinstance(turn, list):
            session.load(turn)
        else:
            replies.append(say(session, turn))
    return replies


def test_repl_answers_each_message_on_its_own_line_and_exits_0_at_the_end(bytes_tok, model, checkpoint):
    result = chat(checkpoint, "hello\n\nhow are you?\n   \n\x07\x1b\nbye\n")
    assert result.rc == 0, result.stderr
    assert result.replies == replies_of(model, bytes_tok, "hello", "how are you?", "bye")  # blank lines get no reply
    assert result.stderr == ""


def test_repl_exit_stops_reading(bytes_tok, model, checkpoint):
    for command in ("/exit", "/QUIT"):
        result = chat(checkpoint, f"hello\n{command}\nbye\n")
        assert result.rc == 0, result.stderr
        assert result.replies == replies_of(model, bytes_tok, "hello")


def test_repl_slash_commands_change_the_session_and_mistakes_get_a_hint(bytes_tok, model, checkpoint):
    result = chat(checkpoint, "/foo\n/rset\n/set temprature 1\n/set bogus 1\nhello\n/set temperature 0.5\n/show\n"
                              "/set temperature -1\n/show\n/set temperature 0\n/set\nhow are you?\n/undo\n/show\nbye\n")
    assert result.rc == 0, result.stderr
    assert "Traceback" not in result.stderr
    hello, _ = replies_of(model, bytes_tok, "hello", "how are you?")
    assert result.replies == replies_of(model, bytes_tok, "hello", "how are you?", [
        {"role": "user", "content": "hello"}, {"role": "assistant", "content": hello}], "bye")
    notes = result.stderr.splitlines()
    assert "unknown command /foo" in notes[0] and "/help" in notes[0]
    assert "did you mean /reset?" in notes[1]
    assert "did you mean temperature?" in notes[2]
    assert "unknown option bogus" in notes[3]
    assert "[temperature = 0.5]" in notes
    shows = [line for line in notes if line.startswith("[temperature=") and "top_k=" in line]
    assert len(shows) == 3 and all("temperature=0.5," in line for line in shows[:2])  # a refused value changes nothing
    assert "temperature=0.0," in shows[2]
    assert "must not be negative" in result.stderr
    assert "usage: /set KEY VALUE" in result.stderr
    used = ChatSession(model, bytes_tok, greedy())
    used.load([{"role": "user", "content": "hello"}, {"role": "assistant", "content": hello}])
    contexts = re.findall(r"\[context: (\d+)/256 tokens, (\d+) turn\(s\)", result.stderr)
    assert contexts == [(str(used.context_used()), "1")] * 3  # after /undo, the second turn is gone


def test_repl_retry_reset_and_system_prompt(bytes_tok, model, checkpoint):
    result = chat(checkpoint, "/retry\n/system be brief\nhello\n/retry\n/system\n/reset\n/system\nhow are you?\n/system -\n/system\n/retry\n")
    assert result.rc == 0, result.stderr
    hello = replies_of(model, bytes_tok, "hello", system="be brief")[0]
    assert result.replies == [hello, hello,  # /retry at temperature 0 says the same again
                              replies_of(model, bytes_tok, "how are you?", system="be brief")[0],  # /reset kept the system prompt
                              replies_of(model, bytes_tok, "how are you?")[0]]  # /system - removed it
    notes = result.stderr.splitlines()
    assert notes[0] == "[nothing to retry]"
    assert notes.count("[system prompt: 'be brief']") == 2 and "[conversation cleared]" in notes
    assert notes[-1] == "[no system prompt; /system TEXT sets one]"


def test_repl_save_writes_jsonl_that_load_restores(bytes_tok, model, checkpoint, tmp_path):
    saved = tmp_path / "talk.jsonl"
    result = chat(checkpoint, f"/system be brief\nhello\nhow are you?\n/save {saved}\n")
    assert result.rc == 0, result.stderr
    hello, how = replies_of(model, bytes_tok, "hello", "how are you?", system="be brief")
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}, {"role": "assistant", "content": hello},
                {"role": "user", "content": "how are you?"}, {"role": "assistant", "content": how}]
    assert [json.loads(line) for line in saved.read_text(encoding="utf-8").splitlines()] == [{"messages": messages}]
    assert f"[saved 5 messages to {saved}]" in result.stderr

    result = chat(checkpoint, f"/load {saved}\n/show\nand then?\n")
    assert result.rc == 0, result.stderr
    assert f"[loaded 5 messages from {saved}]" in result.stderr
    assert "2 turn(s)" in result.stderr
    assert result.replies == replies_of(model, bytes_tok, messages, "and then?")


def test_repl_load_of_a_missing_or_malformed_file_says_why_and_goes_on(bytes_tok, model, checkpoint, tmp_path):
    malformed, no_messages = tmp_path / "bad.jsonl", tmp_path / "other.jsonl"
    malformed.write_text('{"messages": [\n', encoding="utf-8")
    no_messages.write_text('{"text": "hi"}\n', encoding="utf-8")
    missing = tmp_path / "nowhere.jsonl"
    result = chat(checkpoint, f"hello\n/load {missing}\n/load {malformed}\n/load {no_messages}\n/load\nbye\n")
    assert result.rc == 0, result.stderr
    assert result.replies == replies_of(model, bytes_tok, "hello", "bye")  # the conversation is unchanged
    notes = result.stderr.splitlines()
    assert len(notes) == 4 and "Traceback" not in result.stderr
    assert str(missing) in notes[0] and "does not exist" in notes[0]
    assert f"{malformed}:1 is not valid JSON" in notes[1]
    assert f"{no_messages}:1" in notes[2] and "messages" in notes[2]
    assert "usage: /load FILE" in notes[3]


def test_repl_reports_a_line_that_is_not_utf8_and_answers_the_others(bytes_tok, model, checkpoint):
    result = chat(checkpoint, b"hello\n\xff\xfe bad \xc3\n\xe4\xbd\xa0\xe5\xa5\xbd\nbye\n")
    assert result.rc == 0, result.stderr
    assert result.replies == replies_of(model, bytes_tok, "hello", "你好", "bye")
    assert result.stderr.strip().splitlines() == ["[line 2 is not valid UTF-8 (byte 0); skipped]"]


def test_repl_reads_json_lines_as_messages(bytes_tok, model, checkpoint):
    lines = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "two\nlines"}, {"content": "no role"}]
    result = chat(checkpoint, "".join(json.dumps(line) + "\n" for line in lines))
    assert result.rc == 0, result.stderr
    assert result.replies == replies_of(model, bytes_tok, "two\nlines", "no role", system="be brief")


def test_repl_multi_line_messages_count_once_and_control_characters_are_dropped(bytes_tok, model, checkpoint, tmp_path):
    saved = tmp_path / "talk.jsonl"
    stdin = 'first \\\nsecond\n"""\nblock one\n\n/not a command\n"""\nhe\x07llo\x1b[0m\n' + f"/save {saved}\n"
    result = chat(checkpoint, stdin)
    assert result.rc == 0, result.stderr
    users = ["first \nsecond", "block one\n\n/not a command", "hello[0m"]
    assert result.replies == replies_of(model, bytes_tok, *users)
    messages = json.loads(saved.read_text(encoding="utf-8"))["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == users


def test_repl_refuses_a_message_longer_than_the_context_and_answers_the_next(bytes_tok, model, checkpoint):
    result = chat(checkpoint, "x" * 300 + "\nhello\n")
    assert result.rc == 0, result.stderr
    assert result.replies == replies_of(model, bytes_tok, "hello")
    assert "the model's context is 256 tokens" in result.stderr and "shorten it" in result.stderr


def test_repl_verbose_prints_what_each_turn_prefilled_and_reused(bytes_tok, model, checkpoint):
    result = chat(checkpoint, "hello\nhow are you?\nbye\n", "--verbose")
    assert result.rc == 0, result.stderr
    session = ChatSession(model, bytes_tok, greedy())
    expected = []
    for text in ("hello", "how are you?", "bye"):
        say(session, text)
        expected.append((session.stats["prefilled"], session.stats["reused"]))
    figures = [tuple(map(int, f)) for f in re.findall(r"prefilled (\d+) tokens, reused (\d+) from the cache", result.stderr)]
    assert figures == expected
    assert figures[0][1] == 0 and all(reused > prefilled for prefilled, reused in figures[1:])


def test_repl_notes_once_that_a_checkpoint_is_not_chat_tuned(bytes_tok, model, tmp_path):
    path = tmp_path / "base.pt"
    save_checkpoint(path, model, bytes_tok)
    result = chat(path, "hello\nbye\n")
    assert result.rc == 0, result.stderr
    assert result.replies == replies_of(model, bytes_tok, "hello", "bye")
    assert result.stderr.count("not fine-tuned for chat") == 1


def test_repl_help_and_a_missing_checkpoint(tmp_path):
    result = chat(None, "", "--help")
    assert result.rc == 0 and result.stderr == "", result.stderr
    for option in ("--ckpt=", "--system=", "--verbose", "--temperature=", "--stop="):
        assert option in "\n".join(result.replies)
    for args, fragment in ([f"--ckpt={tmp_path / 'nowhere.pt'}"], "nowhere.pt"), ([], "--ckpt"):
        result = chat(None, "hello\n", *args, cwd=tmp_path)  # tmp_path has no out/ or out_chat/
        assert result.rc == 2 and result.replies == []
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


# --- known bugs: each test states the behaviour a user should get ----------------------------------------------


def test_repl_retry_that_no_longer_fits_is_refused_and_the_session_goes_on(bytes_tok, model, checkpoint):
    result = chat(checkpoint, "hello\n/system " + "s" * 240 + "\n/retry\n/system -\nbye\n")
    assert result.rc == 0, result.stderr
    assert result.replies == replies_of(model, bytes_tok, "hello", "bye")


def test_repl_ignores_a_byte_order_mark(bytes_tok, model, checkpoint):
    result = chat(checkpoint, "\ufeff/exit\nhello\n")
    assert result.rc == 0 and result.replies == []


def test_repl_saves_utf8_whatever_the_locale(checkpoint, tmp_path):
    saved = tmp_path / "talk.jsonl"
    result = chat(checkpoint, f"你好\n/save {saved}\nbye\n", env={"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"})
    assert result.rc == 0, result.stderr
    assert json.loads(saved.read_text(encoding="utf-8"))["messages"][0]["content"] == "你好"
