"""Small pieces every script shares: the user-facing error, atomic file writes, the CLI wrapper."""
import errno
import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path


class UsageError(Exception):
    """A problem the user can fix. Scripts print it as one line, never as a traceback."""


def first_line(error, limit=160):
    """The first line of an exception's message, for one-line errors about files a library could not read."""
    lines = str(error).splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]


def run_cli(main):
    """Run a script's main(), turning UsageError and Ctrl-C into one clear line and an exit code."""
    try:
        main()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


@contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    A crash, Ctrl-C or full disk at any moment leaves either the old file or the new one, never half of it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise UsageError(f"out of disk space while writing {path}; the previous file is intact, free some space and run again") from e
        raise
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def pick_device(name="auto"):
    """'auto' picks CUDA, then Apple's MPS, then the CPU."""
    import torch

    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device={name} but no CUDA GPU is available; use --device=cpu or --device=auto")
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def autocast_for(dtype, device):
    """(whether bf16 is on, the context to run the model in) for a --dtype option: auto is bf16 autocast on CUDA only."""
    import torch

    use_bf16 = dtype == "bfloat16" or (dtype == "auto" and device.startswith("cuda"))
    return use_bf16, torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if use_bf16 else nullcontext()


def check_rules(values, rules):
    """Raise a UsageError naming the first option that breaks its rule: rules are (name, ok, "must ...") triples."""
    from options import format_value  # options imports this module

    for name, ok, rule in rules:
        if not ok:
            raise UsageError(f"--{name}={format_value(getattr(values, name))} {rule}")
