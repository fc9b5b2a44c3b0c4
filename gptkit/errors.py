"""The user-facing error and the CLI wrapper that prints it as one line."""
import os
import sys


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
    except MemoryError:
        print("error: out of memory; use a smaller model, --batch_size or --block_size", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as e:  # torch reports a failed allocation (CPU or GPU) as a RuntimeError or its OutOfMemoryError subclass
        if type(e).__name__ != "OutOfMemoryError" and "allocate" not in str(e):
            raise
        print(f"error: out of memory ({first_line(e, 120)}); use a smaller model, --batch_size or --block_size", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # the reader left (`... | head`): nothing to report, and nothing more to flush at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
