"""chat.py at a real terminal (a pseudo-terminal): input history kept between sessions (Up arrow, Ctrl-R), Tab
completing slash commands, a multi-line paste arriving as one message, and --save writing the conversation as it goes."""
import json
import os
import select
import sys
import time

import pytest

from gptkit.checkpoint import save_checkpoint
from helpers import REPO, tiny_model

pty = pytest.importorskip("pty")
readline = pytest.importorskip("readline")
if "libedit" in (readline.__doc__ or ""):
    pytest.skip("these keystrokes are GNU readline's; this Python has libedit", allow_module_level=True)

UP, CTRL_R, TAB = "\x1b[A", "\x12", "\t"
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"


class Terminal:
    """chat.py running in a pseudo-terminal: type keys, wait for its prompt."""

    def __init__(self, *args, env=None):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: chat.py with the pty as its terminal
            os.chdir(REPO)
            os.execve(sys.executable, [sys.executable, "chat.py", *args], {**os.environ, "TERM": "xterm", **(env or {})})
        self.output = ""

    def wait(self, done, what, timeout=60):
        """Read the screen until done() holds."""
        deadline = time.time() + timeout
        while not done():
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.time()))
            if not ready:
                raise AssertionError(f"no {what} within {timeout} s; the screen so far:\n{self.output[-2000:]}")
            try:
                self.output += os.read(self.fd, 4096).decode("utf-8", "replace")
            except OSError:  # the child has exited
                raise AssertionError(f"chat.py ended before {what}:\n{self.output[-2000:]}") from None

    def read_until(self, text):
        self.wait(lambda: text in self.output, repr(text))

    def type(self, keys, then_prompt=True):
        """Send keys; with then_prompt, wait until the next prompt shows (the reply, or the command, is done)."""
        prompts = self.output.count(">>> ")
        os.write(self.fd, keys.encode())
        if then_prompt:
            self.wait(lambda: self.output.count(">>> ") > prompts, "the next prompt")

    def close(self):
        os.write(self.fd, b"/exit\r")
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


@pytest.fixture
def chat_args(tmp_path, bytes_tok):
    save_checkpoint(tmp_path / "ckpt.pt", tiny_model("gpt2", vocab_size=320, block_size=256, n_embd=32), bytes_tok, chat_tuned=True)
    return [f"--ckpt={tmp_path / 'ckpt.pt'}", "--max_new_tokens=3", "--temperature=0", "--device=cpu", f"--history={tmp_path / 'history'}",
            f"--save={tmp_path / 'chat.jsonl'}"]


def saved_user_messages(tmp_path):
    return [m["content"] for m in json.loads((tmp_path / "chat.jsonl").read_text())["messages"] if m["role"] == "user"]


def test_typed_lines_are_kept_between_sessions_and_up_and_ctrl_r_bring_them_back(tmp_path, chat_args):
    first = Terminal(*chat_args)
    first.read_until(">>> ")
    first.type("my name is Ada\r")
    first.type("what is my name?\r")
    assert first.close() == 0
    assert (tmp_path / "history").read_text().splitlines() == ["my name is Ada", "what is my name?", "/exit"]
    second = Terminal(*chat_args)
    second.read_until(">>> ")
    second.type(UP + UP + UP + "\r")  # three lines back: "my name is Ada"
    second.type(CTRL_R + "what is" + "\r")  # the latest line holding "what is"
    assert second.close() == 0
    assert saved_user_messages(tmp_path) == ["my name is Ada", "what is my name?"]


def test_a_pasted_block_of_lines_is_one_message(tmp_path, chat_args):
    term = Terminal(*chat_args)
    term.read_until(">>> ")
    term.type(PASTE_START + "line one\rline two\rline three" + PASTE_END + "\r")
    assert term.close() == 0
    assert saved_user_messages(tmp_path) == ["line one\nline two\nline three"]


def test_tab_completes_slash_commands_and_set_options(tmp_path, chat_args):
    term = Terminal(*chat_args)
    term.read_until(">>> ")
    term.type("/s" + TAB + TAB, then_prompt=False)  # /save, /set, /show, /stats, /system: readline lists them
    term.read_until("/system")
    term.read_until("\n>>> /s")  # the list, then the prompt and the line shown again
    term.type("e" + TAB + "tempe" + TAB + "0.5\r")  # "/se" completes to "/set ", "tempe" to "temperature "
    term.type("/sho" + TAB + "\r")
    assert "[temperature=0.5," in term.output
    assert term.close() == 0


def test_the_history_file_is_off_by_an_environment_variable(tmp_path, chat_args):
    term = Terminal(*[a for a in chat_args if not a.startswith("--history")], env={"GPTKIT_CHAT_HISTORY": "off", "HOME": str(tmp_path)})
    term.read_until(">>> ")
    term.type("hello\r")
    assert term.close() == 0
    assert not (tmp_path / ".gptkit_chat_history").exists() and saved_user_messages(tmp_path) == ["hello"]
