"""parse_options: typed --key=value options, helpful errors, and config files read as data, never executed."""
from dataclasses import dataclass
from typing import Optional

import pytest

from gptkit.errors import UsageError
from gptkit.options import option, parse_options
from gptkit.train_config import TrainConfig


@dataclass
class Opts:
    n_layer: int = option(4, "layers")
    lr: float = option(1e-3, "learning rate")
    compile: bool = option(False, "compile")
    top_k: Optional[int] = option(50, "top k")
    name: str = option("run", "a name")
    optimizer: str = option("adamw", "optimizer", ("adamw", "muon"))
    inputs: list[str] = option([], "inputs")


def parse(*argv, **kw):
    kw.setdefault("description", "test")
    return parse_options(Opts, list(argv), **kw)


def write_config(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults():
    assert parse() == Opts()
    assert Opts().inputs is not Opts().inputs  # list defaults are not shared between instances


def test_typed_values():
    opts = parse("--n_layer=8", "--lr=3e-4", "--compile=true", "--top_k=none", "--name=big run", "--optimizer=muon", "--inputs=a.txt,b.md")
    assert opts == Opts(n_layer=8, lr=3e-4, compile=True, top_k=None, name="big run", optimizer="muon", inputs=["a.txt", "b.md"])
    assert isinstance(opts.lr, float) and isinstance(opts.n_layer, int)


def test_int_accepts_scientific_notation():
    assert parse("--n_layer=1e3").n_layer == 1000
    assert isinstance(parse("--n_layer=1e3").n_layer, int)


@pytest.mark.parametrize("raw, expected", [("true", True), ("false", False), ("1", True), ("0", False), ("yes", True), ("no", False), ("True", True)])
def test_bool_spellings(raw, expected):
    assert parse(f"--compile={raw}").compile is expected


def test_bare_flag_means_true():
    assert parse("--compile").compile is True


def test_bare_flag_for_a_non_bool_needs_a_value():
    with pytest.raises(UsageError, match=r"--n_layer needs a value"):
        parse("--n_layer")


def test_optional_int():
    assert parse("--top_k=7").top_k == 7
    assert parse("--top_k=None").top_k is None


def test_dashes_in_keys_are_underscores():
    @dataclass
    class WithUnderscore:
        max_iters: int = option(10, "steps")

    assert parse_options(WithUnderscore, ["--max-iters=5"], description="x").max_iters == 5


@pytest.mark.parametrize("arg, fragment", [
    ("--n_layer=abc", "expected int"),
    ("--n_layer=2.5", "expected int"),
    ("--lr=fast", "expected float"),
    ("--compile=maybe", "expected bool"),
    ("--top_k=many", "expected int or none"),
])
def test_wrong_type_names_the_key_and_the_type(arg, fragment):
    with pytest.raises(UsageError) as info:
        parse(arg)
    assert arg in str(info.value)
    assert fragment in str(info.value)


def test_choices_are_enforced_and_listed():
    with pytest.raises(UsageError) as info:
        parse("--optimizer=sgd")
    assert "--optimizer=sgd" in str(info.value)
    assert "adamw" in str(info.value) and "muon" in str(info.value)


def test_unknown_key_suggests_the_close_name():
    with pytest.raises(UsageError, match=r"unknown option --n_layers; did you mean --n_layer\?"):
        parse_options(TrainConfig, ["--n_layers=2"], description="x")


def test_unknown_key_without_a_close_name_points_to_help():
    with pytest.raises(UsageError, match=r"unknown option --zzzz; see --help"):
        parse("--zzzz=1")


def test_bare_argument_when_none_allowed():
    with pytest.raises(UsageError, match="unexpected argument"):
        parse("stray", positional=None)


def test_bare_arguments_fill_a_list_option():
    assert parse("a.txt", "--n_layer=2", "b/", positional="inputs").inputs == ["a.txt", "b/"]


def test_help_lists_every_option_with_default_type_and_choices(capsys):
    with pytest.raises(SystemExit) as info:
        parse("--help")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--n_layer=4  [int]" in out
    assert "--top_k=50  [int or none]" in out
    assert "--compile=false  [bool]" in out
    assert "one of: adamw, muon" in out


def test_config_file_applies(tmp_path):
    path = write_config(tmp_path / "small.py", '"""A docstring is fine."""\nn_layer = 2\nlr = 1  # an int literal for a float option\n'
                                               'compile = True\ntop_k = None\noptimizer = "muon"\ninputs = ["x.txt"]\n')
    opts = parse(path)
    assert opts == Opts(n_layer=2, lr=1.0, compile=True, top_k=None, optimizer="muon", inputs=["x.txt"])
    assert isinstance(opts.lr, float)


def test_later_arguments_override_earlier_ones(tmp_path):
    first = write_config(tmp_path / "first.py", "n_layer = 2\nname = 'first'\n")
    second = write_config(tmp_path / "second.py", "n_layer = 3\n")
    assert parse(first, "--n_layer=6").n_layer == 6
    opts = parse(first, second)
    assert (opts.n_layer, opts.name) == (3, "first")
    assert parse("--n_layer=9", first, "--lr=0.5", "--n_layer=7") == Opts(n_layer=7, lr=0.5, name="first")


def test_default_config_applies_only_without_a_config_file(tmp_path):
    default = write_config(tmp_path / "default.py", "n_layer = 12\n")
    other = write_config(tmp_path / "other.py", "lr = 0.5\n")
    assert parse("--lr=0.1", default_config=default) == Opts(n_layer=12, lr=0.1)
    assert parse(other, default_config=default) == Opts(lr=0.5)


def test_config_found_by_name_in_the_config_folder():
    opts = parse_options(TrainConfig, ["default", "--max_iters=5"], description="x")
    assert opts.optimizer == "muon" and opts.max_iters == 5


def test_missing_config_file_lists_the_known_ones():
    with pytest.raises(UsageError, match=r"not found.*default"):
        parse("no_such_config")


@pytest.mark.parametrize("text", [
    "import os\n",
    'x = __import__("os").system("touch PWNED")\n',
    'n_layer = __import__("os").system("touch PWNED")\n',
    'import os; os.system("touch PWNED")\n',
    'def f():\n    pass\n',
    'open("PWNED", "w")\n',
    'n_layer = len("PWNED")\n',
    'n_layer, lr = 1, 2\n',
])
def test_config_file_with_code_is_refused_without_running_it(tmp_path, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path / "evil.py", text)
    with pytest.raises(UsageError) as info:
        parse(path)
    assert "evil.py:1" in str(info.value)
    assert not (tmp_path / "PWNED").exists()


def test_unknown_key_in_a_config_file_names_file_and_line(tmp_path):
    path = write_config(tmp_path / "cfg.py", "n_layer = 2\n\nn_layers = 3\n")
    with pytest.raises(UsageError) as info:
        parse_options(TrainConfig, [path], description="x")
    assert f"{path}:3" in str(info.value)
    assert "did you mean --n_layer" in str(info.value)


@pytest.mark.parametrize("text, fragment", [
    ("n_layer = 'four'\n", "expected int"),
    ("n_layer = 2.5\n", "expected int"),
    ("compile = 1\n", "expected bool"),
    ("optimizer = 'sgd'\n", "expected one of"),
    ("lr = 'fast'\n", "expected float"),
])
def test_wrong_type_in_a_config_file_names_file_and_line(tmp_path, text, fragment):
    path = write_config(tmp_path / "cfg.py", "# comment\n" + text)
    with pytest.raises(UsageError) as info:
        parse(path)
    assert f"{path}:2" in str(info.value) and fragment in str(info.value)


def test_config_file_that_does_not_parse(tmp_path):
    with pytest.raises(UsageError, match="cannot parse"):
        parse(write_config(tmp_path / "cfg.py", "n_layer = = 2\n"))


def test_infinite_int_is_a_usage_error():
    with pytest.raises(UsageError, match="expected int"):
        parse("--n_layer=inf")


def test_large_int_is_exact():
    assert parse(f"--n_layer={2**53 + 1}").n_layer == 2**53 + 1


def test_unhashable_literal_in_a_config_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        parse(write_config(tmp_path / "cfg.py", "inputs = {[1]: 2}\n"))
