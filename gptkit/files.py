"""Files in and out: the one way the toolkit writes a file (atomically, so a crash leaves the old file or the new one,
never half), and the checks that a path given on the command line is what it must be, made before any work starts."""
import errno
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

from gptkit.errors import UsageError, first_line

PACKAGE_DIR = Path(__file__).resolve().parent
# The source checkout this package runs from, if any: no run writes its outputs into it (or into the package).
CHECKOUT = PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").is_file() else None
TEMPORARY = re.compile(r"^\..+\.(tmp|link)(\d+)$")  # what atomic_write and save_rotating leave if killed mid-write


@contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    A crash, Ctrl-C or full disk at any moment leaves either the old file or the new one, never half of it.
    """
    with atomic_path(path) as tmp, open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        yield f


@contextmanager
def atomic_path(path):
    """A temporary path beside `path`, for a writer that opens the file itself; on success the file is fsynced and
    renamed over `path`, so a crash leaves the old file or the new one. The one place that renames a finished write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the writer has closed it: flushed, but maybe not yet on disk
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise UsageError(f"out of disk space while writing {path}; the previous file is intact, free some space and run again") from e
        raise
    except RuntimeError as e:  # torch's zip writer reports a full disk (or any failed write) as a RuntimeError
        if "write" not in str(e).lower():
            raise
        raise UsageError(f"writing {path} failed (is the disk full?); the previous file is intact, free some space and run again") from e
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def user_cache_folder():
    """gptkit's folder in the user's cache ($XDG_CACHE_HOME, else ~/.cache): what is measured or built once per machine."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gptkit"


def clean_temporaries(folder):
    """Delete what interrupted writes left in `folder` (.NAME.tmpPID, .last.pt.linkPID) when that process is gone; returns how many."""
    removed = 0
    for path in Path(folder).glob(".*"):
        match = TEMPORARY.match(path.name)
        if match and path.is_file() and not _running(int(match.group(2))):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _running(pid):
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists (PermissionError: it does, as another user's)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def read_json_object(path, fix):
    """The object a JSON file holds; one line naming the file and how to fix it when it is not valid JSON or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} is not valid JSON ({first_line(e)}); {fix}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{path}: the file should be a JSON object; {fix}")
    return value


def require_file(path, what):
    """A file that must exist: one line that says whether it is missing or a folder."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder; give a file")
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist")
    return path


def read_jsonl_text(path, what, shape):
    """The text of a JSONL file of `what` (one `shape` per line): one line when it is missing, a folder or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        detail = "is a folder" if path.is_dir() else "does not exist"
        raise UsageError(f"{what} file {path} {detail}; give a .jsonl file with one {shape} per line")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def check_output(path, option, folder=False):
    """Refuse, before any work, an output path that cannot be written: empty, the wrong kind, in the source tree,
    or under something that is not a writable folder. Creates nothing."""
    text = str(path)
    if not text.strip():
        raise UsageError(f"--{option} is empty; name the {'folder' if folder else 'file'} to write")
    path = Path(text).expanduser()
    if folder and path.is_file():
        raise UsageError(f"--{option}={text} is a file; name a folder (new or existing)")
    if not folder and path.is_dir():
        raise UsageError(f"--{option}={text} is a folder; name a file to write")
    resolved = path.resolve()
    if resolved in (CHECKOUT, PACKAGE_DIR) or PACKAGE_DIR in resolved.parents:
        raise UsageError(f"--{option}={text} is in the source tree; write outputs elsewhere, e.g. --{option}=out")
    existing = next(p for p in (resolved, *resolved.parents) if p.exists())
    if not existing.is_dir() and existing != resolved:
        raise UsageError(f"--{option}={text}: {existing} is a file, so nothing can be created under it")
    folder_to_write = existing if existing.is_dir() else existing.parent
    if not os.access(folder_to_write, os.W_OK | os.X_OK):
        raise UsageError(f"--{option}={text}: {folder_to_write} is not writable")
    return path
