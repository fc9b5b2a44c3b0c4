"""Where documents come from: local files, folders and globs, a Hugging Face dataset, or the built-in corpus."""
import glob
import json
import sysconfig
from pathlib import Path

from gptkit.errors import UsageError

TEXT_SUFFIXES = (".txt", ".md", ".py", ".jsonl")


def builtin_corpus_files():
    """The Python standard library's own source (code, docstrings, and pydoc_data's reference text): ~12 MB on every machine."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(stdlib.rglob("*.py")):
        parts = path.relative_to(stdlib).parts
        if parts[0] == "site-packages" or any(p in ("test", "tests", "idle_test") for p in parts[:-1]):
            continue
        files.append(path)
    return files


def expand_inputs(inputs):
    """Files named, files under folders, and glob matches, in a stable order; errors name what matched nothing."""
    files = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        elif path.is_file():
            found = [path]
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        else:
            raise UsageError(f"input {item!r} does not exist; give a text file, a folder or a glob such as 'docs/**/*.md'")
        if not found:
            raise UsageError(f"input {item!r} holds no {'/'.join(TEXT_SUFFIXES)} files")
        files.extend(found)
    return files


BINARY_SHARE = 0.3  # a file whose bytes are this much not text (invalid UTF-8 or NUL) is refused as binary


def file_documents(path, text_field="text"):
    """A .jsonl file yields one document per line (its `text_field`); any other file is one document.

    Bytes that are not UTF-8 become U+FFFD, with a note saying how many; a file that is mostly not text is refused.
    """
    text = decode_text(Path(path))
    if Path(path).suffix != ".jsonl":
        yield text
        return
    for line_number, record in jsonl_records(path, text):
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise UsageError(f"{path}:{line_number} has no string field {text_field!r}; name the right one with --text_field")
        yield record[text_field]


def decode_text(path):
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    text = data.decode("utf-8", errors="replace")
    replaced = max(0, text.count("\ufffd") - data.count("\ufffd".encode()))  # characters that stand for invalid bytes
    if data and (replaced + data.count(0)) / len(data) > BINARY_SHARE:
        raise UsageError(f"{path} looks binary, not text ({replaced + data.count(0):,} of its {len(data):,} bytes are not UTF-8 text); "
                         "remove it from the inputs")
    if replaced:
        print(f"note: {path}: {replaced:,} invalid UTF-8 sequence(s) replaced with U+FFFD", flush=True)
    return text


def jsonl_records(path, text):
    """(line number, parsed object) for each non-blank line of a JSONL text; a bad line is an error naming it."""
    for line_number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield line_number, json.loads(line)
        except ValueError:
            raise UsageError(f"{path}:{line_number} is not valid JSON; fix the line or remove it") from None


def load_dataset(name, split="train", streaming=False):
    """A Hugging Face dataset (a hub name, or a local folder of data files); one line when it cannot be loaded."""
    try:
        import datasets
    except ImportError:
        raise UsageError("reading a Hugging Face dataset needs the `datasets` package: pip install datasets") from None
    try:
        return datasets.load_dataset(name, split=split, streaming=streaming)
    except Exception as e:  # the hub, the network and the builders raise many kinds
        raise UsageError(f"could not load dataset {name!r} split {split!r}: {str(e).splitlines()[0][:200]}") from None


def dataset_documents(name, split="train", text_field="text", streaming=False):
    """Documents of a Hugging Face dataset (a hub name, or a local folder of data files), optionally streamed."""
    data = load_dataset(name, split, streaming)
    columns = data.column_names
    if columns is not None and text_field not in columns:
        raise UsageError(f"dataset {name!r} has no column {text_field!r} (it has: {', '.join(columns)}); set --text_field")
    for record in data:
        if record.get(text_field) is None:
            raise UsageError(f"dataset {name!r} has a record without {text_field!r}; set --text_field")
        yield record[text_field]
