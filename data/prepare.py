"""Turn a corpus into token shards: python data/prepare.py [FILES/FOLDERS/GLOBS ...] [--key=value ...]

With no input and no --dataset it prepares the built-in corpus (the Python standard library's source, without its
generated codec tables). Validation holds out the documents whose paths (or record indices) hash below --val_fraction,
raised to expect 32 of them when the files can be counted; a corpus too small for that holds out its tail.
The shards and meta.json go to --out_dir, by default prepared/NAME-HASH-TOKENIZER under the current folder
(or under $GPTKIT_PREPARED when set).
"""
from gptkit.errors import run_cli
from gptkit.options import parse_options
from gptkit.preparation import PrepareConfig, prepare


def main():
    prepare(parse_options(PrepareConfig, description=__doc__, positional="inputs"))


def cli():
    """The gptkit-prepare command, and `python data/prepare.py`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
