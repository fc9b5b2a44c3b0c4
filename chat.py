"""Chat with a checkpoint in the terminal: python chat.py [--ckpt=out_chat] [--system="..."] [--key=value ...]

Every turn the whole conversation is the model's context; the KV cache is kept across turns, so a turn prefills
only its new tokens. When the conversation outgrows the context, the oldest turns are dropped (the system prompt stays).
Type /help for commands. End a line with \\ to continue it on the next, or put a message between two lines of \"\"\".
Ctrl-C stops a reply; Ctrl-C twice or Ctrl-D quits.

With stdin not a terminal (a pipe or a file), each line is one user message (or a JSON object {"role", "content"}),
each reply is printed on its own line, and notes go to stderr.
"""
import difflib
import importlib
import json
import os
import sys
import unicodedata
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from gptkit.chat_session import CHAT_TEMPERATURE, ChatSession
from gptkit.chat_template import read_conversations
from gptkit.checkpoint import build_model
from gptkit.devices import pick_device
from gptkit.engine import SamplingOptions, check_sampling, sampling_options
from gptkit.errors import UsageError, run_cli
from gptkit.files import atomic_write
from gptkit.loading import default_chat_checkpoint, load_any_checkpoint
from gptkit.options import format_value, option, parse_options, set_option
from gptkit.precision import DTYPES, for_generation
from gptkit.precision import HELP as DTYPE_HELP

HELP = """commands:
  /help               this list
  /exit               quit (also /quit, Ctrl-D, or Ctrl-C twice)
  /reset              forget the conversation, keep the system prompt
  /system TEXT        set the system prompt (/system alone shows it; /system - removes it)
  /undo               remove your last message and the reply to it
  /retry              reply to your last message again
  /set KEY VALUE      change a sampling option, e.g. /set temperature 0.5 (see /show)
  /show               the sampling options and how much of the context the conversation uses
  /stats              prefill and speed figures of the last reply (--verbose prints them every turn)
  /save FILE          save the conversation as JSONL {"messages": [...]}
  /load FILE          load a conversation saved by /save (or any {"messages": [...]} line)
multi-line input: end a line with \\ to continue it, or type \"\"\" on a line, the message, then \"\"\" again"""
COMMANDS = ("help", "exit", "quit", "reset", "system", "undo", "retry", "set", "show", "stats", "save", "load")
DEFAULT_HISTORY = "~/.gptkit_chat_history"
HISTORY_OFF = ("", "off", "0", "false", "no")  # GPTKIT_CHAT_HISTORY values that turn the history file off


# -- options and the terminal ---------------------------------------------------------------------------------------------

@dataclass
class ChatConfig(SamplingOptions):
    ckpt: str = option("", "a checkpoint file or folder, a Hugging Face GPT-2 folder, or a hub name like gpt2 "
                           "(empty: out_chat/ when it holds one, else out/)")
    system: str = option("", "the system prompt")
    verbose: bool = option(False, "print the prefill and speed figures of every reply")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", DTYPE_HELP, DTYPES)
    temperature: float = option(CHAT_TEMPERATURE, "0 picks the most likely token; higher is more random", bounds=">=0")
    history: str = option(DEFAULT_HISTORY, "the file that keeps typed lines between sessions (Up arrow, Ctrl-R); empty, or "
                                           "GPTKIT_CHAT_HISTORY=off, keeps none")
    save: str = option("", "write the conversation to this JSONL file after every turn, as /save does")


class Terminal:
    """Where text goes: replies to stdout; notes dim on a terminal, or to stderr when stdout is a pipe."""

    def __init__(self, interactive):
        self.interactive = interactive
        self.color = interactive and sys.stdout.isatty()

    def note(self, text):
        if self.interactive:
            print(f"\033[2m{text}\033[0m" if self.color else text, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def write(self, text):
        sys.stdout.write(text)
        sys.stdout.flush()


def clean(text):
    """Drop control characters a paste can carry (keeping newlines and tabs)."""
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")


# -- the REPL: one line in, a reply or a command out ----------------------------------------------------------------------

class Repl:
    def __init__(self, session, terminal, verbose, save_path=""):
        self.session, self.term, self.verbose = session, terminal, verbose
        self.save_path, self.saved = save_path, None  # --save: the file, and the messages last written there

    # --- turns ------------------------------------------------------------------------------------------------

    def stream(self, pieces):
        """Print a reply as it streams; Ctrl-C stops it and keeps the session (and what was said so far)."""
        try:
            for piece in pieces:
                self.term.write(piece)
        except KeyboardInterrupt:
            pieces.close()
            self.term.write("\n")
            self.term.note("[reply stopped]")
            return
        self.term.write("\n")
        stats = self.session.stats
        if stats.get("dropped_turns"):
            self.term.note(f"[dropped the {stats['dropped_turns']} oldest turn(s) to fit the context of {self.session.block_size} tokens]")
        if stats.get("context_limited"):
            self.term.note("[reply cut: the context is full; /reset or /undo to make room]")
        if self.verbose:
            self.show_stats()

    def user_turn(self, text):
        text = clean(text).strip()
        if not text:
            return
        try:
            pieces = self.session.respond(text)
        except UsageError as e:
            self.term.note(f"[{e}]")
            return
        self.stream(pieces)

    # --- commands ---------------------------------------------------------------------------------------------

    def command(self, line):
        """Run a slash command; False means quit."""
        name, _, arg = line[1:].partition(" ")
        name, arg = name.lower(), arg.strip()
        if name not in COMMANDS:
            close = difflib.get_close_matches(name, COMMANDS, n=1)
            self.term.note(f"[unknown command /{name}{f'; did you mean /{close[0]}?' if close else ''}; /help lists them]")
            return True
        if name in ("exit", "quit"):
            return False
        getattr(self, f"cmd_{name}")(arg)
        return True

    def cmd_help(self, arg):
        self.term.note(HELP)

    def cmd_reset(self, arg):
        self.session.reset()
        self.term.note("[conversation cleared]")

    def cmd_system(self, arg):
        if not arg:
            current = next((m["content"] for m in self.session.messages if m["role"] == "system"), "")
            self.term.note(f"[system prompt: {current!r}]" if current else "[no system prompt; /system TEXT sets one]")
            return
        self.session.set_system("" if arg == "-" else clean(arg))
        self.term.note("[system prompt removed]" if arg == "-" else "[system prompt set]")

    def cmd_undo(self, arg):
        self.term.note("[removed your last message and its reply]" if self.session.undo() else "[nothing to undo]")

    def cmd_retry(self, arg):
        try:
            pieces = self.session.retry()
        except UsageError as e:
            self.term.note(f"[{e}]")
            return
        if pieces is None:
            self.term.note("[nothing to retry]")
        else:
            self.stream(pieces)

    def cmd_set(self, arg):
        key, _, value = arg.partition(" ")
        names = [f.name for f in fields(SamplingOptions)]
        if not key or not value.strip():
            self.term.note(f"[usage: /set KEY VALUE, KEY one of {', '.join(names)}]")
            return
        options = self.session.options
        try:
            if key not in names:
                set_option(SamplingOptions(), key, value.strip())  # raises the did-you-mean error
            set_option(options, key, value.strip())  # checks the type and bounds before it sets anything
        except UsageError as e:
            self.term.note(f"[{str(e).replace('--', '').replace('see help for the list', '/show lists them')}]")
            return
        self.term.note(f"[{key} = {format_value(getattr(options, key))}]")

    def cmd_show(self, arg):
        options = self.session.options
        settings = ", ".join(f"{f.name}={format_value(getattr(options, f.name))}" for f in fields(SamplingOptions))
        used = self.session.context_used()
        turns = sum(m["role"] == "user" for m in self.session.messages)
        self.term.note(f"[{settings}]\n[context: {used}/{self.session.block_size} tokens, {turns} turn(s); "
                       f"{self.session.dropped_turns} dropped to fit so far]")

    def cmd_stats(self, arg):
        if self.session.stats is None:
            self.term.note("[no reply yet]")
        else:
            self.show_stats()

    def show_stats(self):
        s = self.session.stats
        self.term.note(f"[prefilled {s['prefilled']} tokens, reused {s['reused']} from the cache, first token in {1000 * s['ttft_s']:.0f} ms, "
                       f"{s['new_tokens']} tokens at {s['decode_tokens_per_s']:.1f} tokens/s]")

    def cmd_save(self, arg):
        if not arg:
            self.term.note("[usage: /save FILE]")
        elif self.write(arg):
            self.term.note(f"[saved {len(self.session.messages)} messages to {arg}]")

    def write(self, path):
        """The conversation as one JSONL line {"messages": [...]}, written atomically; False (and a note) when it cannot be."""
        try:
            with atomic_write(Path(path).expanduser(), "w") as f:
                f.write(json.dumps({"messages": self.session.plain_messages()}, ensure_ascii=False) + "\n")
        except (OSError, UsageError) as e:
            self.term.note(f"[could not save to {path}: {e}]")
            return False
        return True

    def autosave(self):
        """--save: write the conversation whenever it has changed."""
        messages = self.session.plain_messages()
        if self.save_path and messages != self.saved and self.write(self.save_path):
            self.saved = messages

    def cmd_load(self, arg):
        if not arg:
            self.term.note("[usage: /load FILE]")
            return
        try:
            conversation = read_conversations(Path(arg).expanduser())[-1]
        except (UsageError, OSError) as e:
            self.term.note(f"[{e}]")
            return
        self.session.load(conversation["messages"])
        self.term.note(f"[loaded {len(self.session.messages)} messages from {arg}]")


# -- reading input: a terminal or a pipe ----------------------------------------------------------------------------------

def read_message(first_line, read_more):
    """A message from its first line, continued by a trailing backslash or wrapped in a \"\"\" block."""
    if first_line.strip() == '"""':
        block = []
        while (line := read_more()) is not None and line.strip() != '"""':
            block.append(line)
        return "\n".join(block)
    lines = [first_line]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        line = read_more()
        if line is None:
            break
        lines.append(line)
    return "\n".join(lines)


class TerminalInput:
    """Lines typed at a prompt, with readline's line editing: history kept in a file between sessions (Up arrow, Ctrl-R
    to search it), Tab completing slash commands and /set's options, and a multi-line paste arriving as one message
    (bracketed paste). Ctrl-C at the prompt warns once and quits when pressed again."""

    def __init__(self, history=""):
        self.warned, self.history, self.readline = False, None, None
        try:
            self.readline = importlib.import_module("readline")  # importing it gives input() line editing
        except ImportError:
            return
        rl = self.readline
        if "libedit" in (rl.__doc__ or ""):  # macOS's readline stand-in has its own syntax
            rl.parse_and_bind("bind ^I rl_complete")
        else:
            rl.parse_and_bind("tab: complete")
            rl.parse_and_bind("set enable-bracketed-paste on")  # a pasted block with newlines is one input, not one per line
        rl.set_completer_delims(" \t\n")
        rl.set_completer(self.complete)
        if history:
            self.open_history(Path(history).expanduser())

    def open_history(self, path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600, exist_ok=True)  # typed lines can be private: readable by this user only
            self.readline.read_history_file(path)
            self.readline.set_history_length(HISTORY_LENGTH)
            self.history = path
        except OSError as e:
            print(f"[no input history: {path} cannot be used ({e.strerror or e})]")

    def complete(self, text, state):
        """readline's completer: slash commands, and after /set the sampling options."""
        line = self.readline.get_line_buffer()
        if line.startswith("/set ") and " " not in line[len("/set "):]:
            options = [f.name for f in fields(SamplingOptions)]
        elif line.startswith("/") and " " not in line:
            options = [f"/{c}" for c in COMMANDS]
        else:
            return None
        matches = [f"{o} " for o in options if o.startswith(text)]  # the space: what follows a command or an option
        return matches[state] if state < len(matches) else None

    def read(self, prompt):
        """The next line, or None to quit."""
        while True:
            try:
                line = input(prompt)
                self.warned = False
                self.remember()
                return line
            except KeyboardInterrupt:
                if self.warned:
                    print()
                    return None
                print("\n(Ctrl-C again or Ctrl-D to quit)")
                self.warned = True
            except UnicodeDecodeError:
                print("[that input is not valid UTF-8; type it again]")
            except EOFError:
                print()
                return None


    def remember(self):
        """Add the line just read to the history file at once, so a crash or a kill keeps it."""
        if self.history is not None:
            try:
                self.readline.append_history_file(1, self.history)
            except OSError:
                self.history = None  # the file went away or filled the disk: keep the session going without it


class PipedInput:
    """Lines of a piped stdin, decoded as UTF-8; a line that is not UTF-8 is reported and skipped."""

    def __init__(self, term):
        self.term, self.lines, self.number = term, iter(sys.stdin.buffer), 0

    def read(self, prompt=None):
        for raw in self.lines:
            self.number += 1
            try:
                return raw.decode("utf-8-sig" if self.number == 1 else "utf-8").rstrip("\r\n")  # a leading byte-order mark is not text
            except UnicodeDecodeError as e:
                self.term.note(f"[line {self.number} is not valid UTF-8 (byte {e.start}); skipped]")
        return None


HISTORY_LENGTH = 2000  # lines the history file keeps


def history_file(option):
    """The history file to use: --history, unless GPTKIT_CHAT_HISTORY turns it off (off, 0, false, no) or names another."""
    setting = os.environ.get("GPTKIT_CHAT_HISTORY")
    if setting is not None:
        return "" if setting.strip().lower() in HISTORY_OFF else setting
    return option


def json_message(line):
    """A piped line that is a JSON {"role", "content"} object, as (role, content); None for plain text."""
    if not line.lstrip().startswith("{"):
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if isinstance(message, dict) and isinstance(message.get("content"), str) and message.get("role", "user") in ("user", "system", "assistant"):
        return message.get("role", "user"), message["content"]
    return None


# -- running it -----------------------------------------------------------------------------------------------------------

def run(repl, source, interactive):
    """Read messages and commands until /exit or the end of input."""
    while (line := source.read(">>> ")) is not None:
        if not interactive and (message := json_message(line)):
            role, content = message
            if role == "system":
                repl.cmd_system(content or "-")
            elif role == "assistant":
                repl.term.note("[a piped message with role \"assistant\" was skipped: the model writes the replies; send user or system messages]")
            else:
                repl.user_turn(content)
        elif line.startswith("/"):
            if not repl.command(line.strip()):
                return
        else:
            repl.user_turn(read_message(line, lambda: source.read("... ")))
        repl.autosave()


def main():
    cfg = parse_options(ChatConfig, description=__doc__, positional=None)
    check_sampling(cfg)
    ckpt = load_any_checkpoint(default_chat_checkpoint(cfg.ckpt))
    device = pick_device(cfg.device)
    model, tokenizer = build_model(ckpt, device)
    n_params = model.num_params()
    precision = for_generation(model, cfg.dtype, device)
    interactive = sys.stdin.isatty()
    term = Terminal(interactive)
    session = ChatSession(model, tokenizer, sampling_options(cfg), clean(cfg.system))
    if interactive:
        term.note(f"chatting with {ckpt['path']} ({n_params / 1e6:.1f}M parameters, context {model.config.block_size} tokens, "
                  f"{precision} precision); "
                  "/help for commands, Ctrl-D to quit")
    if not ckpt.get("chat_tuned"):
        term.note("note: this checkpoint was not fine-tuned for chat, so it sees the raw chat template and may ramble "
                  "(config/chat_demo.py shows how to fine-tune one)")
    repl = Repl(session, term, cfg.verbose, cfg.save)
    history = cfg.history if cfg.history != DEFAULT_HISTORY else history_file(cfg.history)
    run(repl, TerminalInput(history) if interactive else PipedInput(term), interactive)


def cli():
    """The gptkit-chat command, and `python chat.py`."""
    torch.set_grad_enabled(False)
    run_cli(main)


if __name__ == "__main__":
    cli()
