"""The one option parser: dataclass defaults, then config files, then --key=value overrides.

Config files look like Python (`n_layer = 4`) but are read as data: only `name = literal` lines are allowed,
and nothing in them is executed.
"""
import ast
import dataclasses
import difflib
import math
import sys
import typing
from pathlib import Path

from gptkit.errors import UsageError

# The ready configs: config/ of a source checkout, beside this package; an installed wheel holds them in gptkit/config/.
CONFIG_DIR = next((d for d in (Path(__file__).resolve().parent / "config", Path(__file__).resolve().parent.parent / "config") if d.is_dir()),
                  Path("config"))


def option(default, help, choices=None, bounds=None):
    """A dataclass field with its --help text and, optionally, the values it accepts.

    bounds: the range a number must lie in, written as in mathematics: ">0", ">=1", "[0, 1)", "(0, 1]", "[1, 65536]".
    A float must be finite whatever its bounds; None (for an Optional option) is always allowed.
    """
    meta = {"help": help, "choices": choices, "bounds": Bounds.parse(bounds) if bounds else None}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Bounds:
    """A number's allowed range: low and high ends, each included or not (None: no end)."""

    def __init__(self, text, low=None, low_in=True, high=None, high_in=True):
        self.text, self.low, self.low_in, self.high, self.high_in = text, low, low_in, high, high_in

    @classmethod
    def parse(cls, text):
        t = text.replace(" ", "")
        if t[0] in "[(" and t[-1] in "])":
            low, high = t[1:-1].split(",")
            return cls(text, float(low), t[0] == "[", float(high), t[-1] == "]")
        for op in (">=", "<=", ">", "<"):
            if t.startswith(op):
                value = float(t[len(op):])
                return cls(text, low=value, low_in=op == ">=") if op[0] == ">" else cls(text, high=value, high_in=op == "<=")
        raise ValueError(f"bounds {text!r}: write them as >0, >=1, <=1, [0, 1) or (0, 1]")

    def __contains__(self, x):
        above = self.low is None or (x >= self.low if self.low_in else x > self.low)
        below = self.high is None or (x <= self.high if self.high_in else x < self.high)
        return above and below

    def rule(self):
        """What the value must do, as help and errors say it: 'be positive', 'not be negative', 'be in [0, 1)'."""
        t = self.text.replace(" ", "")
        if t[0] in "[(":
            return f"be in {self.text}"
        if t in (">0", ">=0"):
            return "be positive" if t == ">0" else "not be negative"
        op, value = (t[:2], t[2:]) if t[1] == "=" else (t[:1], t[1:])
        return {">=": "be at least", ">": "be greater than", "<=": "be at most", "<": "be less than"}[op] + f" {value}"


def parse_options(cls, argv=None, *, description, positional="config", default_config=None):
    """Build a `cls` instance from argv.

    positional="config": bare arguments are config files (`config/x.py` or just `x`), applied in order;
    another name: bare arguments are appended to the list option of that name; None: no bare arguments. `default_config` is applied
    when no config file is given.
    """
    argv = sys.argv[1:] if argv is None else argv
    fields = {f.name: f for f in dataclasses.fields(cls)}
    types = typing.get_type_hints(cls)
    values, bare = {}, []
    if any(a in ("-h", "--help") for a in argv):
        print(usage(cls, description, positional))
        sys.exit(0)
    if positional == "config" and default_config and not any(not a.startswith("--") for a in argv):
        argv = [default_config, *argv]
    for arg in argv:
        if arg.startswith("--"):
            key, has_value, raw = arg[2:].partition("=")
            key = key.replace("-", "_")
            _check_known(key, fields)
            if not has_value:
                if types[key] is not bool:
                    raise UsageError(f"--{key} needs a value: --{key}=VALUE (see --help)")
                raw = "true"
            values[key] = _convert(key, raw, types[key], fields[key].metadata.get("choices"), fields[key].metadata.get("bounds"))
        elif positional == "config":
            for key, value, where in read_config_file(arg):
                _check_known(key, fields, where)
                values[key] = _check_value(key, value, types[key], fields[key].metadata.get("choices"), where, fields[key].metadata.get("bounds"))
        elif positional:
            bare.append(arg)
        else:
            raise UsageError(f"unexpected argument {arg!r}; options are given as --key=value (see --help)")
    if bare:
        values[positional] = values.get(positional, []) + bare
    return cls(**values)


def resolve_config_path(name):
    path = Path(name)
    if not path.exists() and not path.suffix:
        path = CONFIG_DIR / f"{name}.py"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.py")))
        raise UsageError(f"config file {name!r} not found; give a path or one of: {known}")
    return path


def read_config_file(name):
    """Yield (key, value, 'file:line') for each `key = literal` line of a config file."""
    path = resolve_config_path(name)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot parse config file: {e}") from None
    for node in tree.body:
        where = f"{path}:{node.lineno}"
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise UsageError(f"{where}: only `name = value` lines are allowed in config files (they are read as data, not run)")
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            raise UsageError(f"{where}: the value of {node.targets[0].id} must be a literal (number, string, True/False, None, list)") from None
        yield node.targets[0].id, value, where


def usage(cls, description, positional):
    lines = [description.strip(), ""]
    if positional == "config":
        configs = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.py")))
        lines += [f"usage: {Path(sys.argv[0]).name} [CONFIG ...] [--key=value ...]", f"  CONFIG: a config file, or one of: {configs}", ""]
    elif positional:
        lines += [f"usage: {Path(sys.argv[0]).name} [{positional.upper()} ...] [--key=value ...]", ""]
    else:
        lines += [f"usage: {Path(sys.argv[0]).name} [--key=value ...]", ""]
    lines.append("options:")
    types = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind = _type_name(types[f.name])
        choices = f.metadata.get("choices")
        extra = f" (one of: {', '.join(map(str, choices))})" if choices else ""
        if f.metadata.get("bounds"):
            extra += f" (must {f.metadata['bounds'].rule()})"
        lines.append(f"  --{f.name}={format_value(default)}  [{kind}]  {f.metadata.get('help', '')}{extra}")
    return "\n".join(lines)


def format_value(value):
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _type_name(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is list:
        return f"list of {args[0].__name__}"
    if args:  # Optional[X]
        return f"{args[0].__name__} or none"
    return tp.__name__


def _check_known(key, fields, where=None):
    if key in fields:
        return
    close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
    hint = f"; did you mean --{close[0]}?" if close else "; see --help for the list"
    prefix = f"{where}: " if where else ""
    raise UsageError(f"{prefix}unknown option --{key}{hint}")


def _convert(key, raw, tp, choices, bounds=None):
    """Turn the command line's text into a value of the option's type."""
    optional = type(None) in typing.get_args(tp)
    base = next((a for a in typing.get_args(tp) if a is not type(None)), tp) if optional else tp
    if optional and raw.lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            lowered = raw.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            value = lowered in ("true", "1", "yes")
        elif base is int:
            value = _parse_int(raw)
        elif base is float:
            value = float(raw)
        elif typing.get_origin(base) is list:
            item = typing.get_args(base)[0]
            value = [item(x) for x in raw.split(",") if x]
        else:
            value = raw
    except (ValueError, OverflowError):
        raise UsageError(f"--{key}={raw}: expected {_type_name(tp)}") from None
    return _check_bounds(key, _check_choice(key, value, choices), bounds)


def _parse_int(raw):
    """An integer, exactly; also scientific notation such as 1e4 when it is a whole number."""
    try:
        return int(raw)
    except ValueError:
        number = float(raw)
        if number != int(number):  # int() of inf raises OverflowError, of nan ValueError
            raise ValueError from None
        return int(number)


def _check_value(key, value, tp, choices, where, bounds=None):
    """Check a config file's literal against the option's type."""
    optional = type(None) in typing.get_args(tp)
    base = next((a for a in typing.get_args(tp) if a is not type(None)), tp) if optional else tp
    ok = (
        (value is None and optional)
        or (base is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (base is int and isinstance(value, int) and not isinstance(value, bool))
        or (base is bool and isinstance(value, bool))
        or (base is str and isinstance(value, str))
        or (typing.get_origin(base) is list and isinstance(value, list))
    )
    if not ok:
        raise UsageError(f"{where}: {key} = {value!r}: expected {_type_name(tp)}")
    value = float(value) if base is float and value is not None else value
    return _check_bounds(key, _check_choice(key, value, choices, where), bounds, where)


def check_values(cfg):
    """Check every option's choices and bounds, for configs built in code rather than parsed."""
    for f in dataclasses.fields(cfg):
        _check_bounds(f.name, _check_choice(f.name, getattr(cfg, f.name), f.metadata.get("choices")), f.metadata.get("bounds"))


def _check_choice(key, value, choices, where=None):
    """A value must be one of the choices; a list option's every item must."""
    if choices and any(v not in choices for v in (value if isinstance(value, list) else [value])):
        prefix = f"{where}: " if where else ""
        raise UsageError(f"{prefix}--{key}={format_value(value)}: expected one of {', '.join(map(str, choices))}")
    return value


def _check_bounds(key, value, bounds, where=None):
    """A float must be finite, and a number within the option's bounds; a list option's every item must."""
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        prefix = f"{where}: " if where else ""
        if isinstance(v, float) and not math.isfinite(v):
            raise UsageError(f"{prefix}--{key}={format_value(v)} must be a finite number")
        if isinstance(v, int) and abs(v) >= 2**63:  # what torch and numpy hold
            raise UsageError(f"{prefix}--{key}={format_value(v)} is too large")
        if bounds is not None and v not in bounds:
            raise UsageError(f"{prefix}--{key}={format_value(v)} must {bounds.rule()}")
    return value


def set_option(cfg, key, raw):
    """Set one option of a parsed config from text, as --key=raw would (chat.py's /set)."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    _check_known(key, fields)
    value = _convert(key, raw, typing.get_type_hints(type(cfg))[key], fields[key].metadata.get("choices"), fields[key].metadata.get("bounds"))
    setattr(cfg, key, value)
    return value


def check_rules(values, rules):
    """Raise a UsageError naming the first option that breaks its rule: rules are (name, ok, "must ...") triples."""
    for name, ok, rule in rules:
        if not ok:
            raise UsageError(f"--{name}={format_value(getattr(values, name))} {rule}")
