"""Shared fixtures: tiny corpora, tokenizers and models, plus the --runslow switch.

Everything here is offline: Hugging Face is told not to touch the network, and the tests never download.
"""
import os
import tempfile
from pathlib import Path

# Set before any test module imports `datasets` or `huggingface_hub`, which read these once at import.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_CACHE", str(Path(tempfile.gettempdir()) / "gptkit-tests-hf-cache"))
# Tiny models run fastest on one thread, and threads fighting over 2 cores (or another job) slow each step badly.
# Subprocesses (the CLI tests) inherit this through the environment.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(1)
settings.register_profile("gptkit", deadline=None, max_examples=60, derandomize=True)
settings.load_profile("gptkit")

from helpers import SAMPLES, SHAKESPEARE, make_corpus  # noqa: E402 (after the environment above)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow; run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def corpus_text():
    return make_corpus()


@pytest.fixture
def corpus_file(tmp_path, corpus_text):
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def bytes_tok():
    from gptkit.tokenizer import byte_tokenizer

    return byte_tokenizer()


@pytest.fixture(scope="session")
def bpe_tok(corpus_text):
    from gptkit.tokenizer import train_bpe_tokenizer

    texts = [corpus_text, *SAMPLES.values()] * 2
    return train_bpe_tokenizer(iter(texts), 400)


@pytest.fixture(scope="session")
def shakespeare_text():
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is absent")
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, corpus_text):
    """The synthetic corpus prepared once with the bytes tokenizer, 10% held out. Tests must not modify it."""
    from gptkit.preparation import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("prepared")
    (root / "corpus.txt").write_text(corpus_text, encoding="utf-8")
    prepare(PrepareConfig(inputs=[str(root / "corpus.txt")], tokenizer="bytes", val_fraction=0.1, out_dir=str(root / "bytes")))
    return root / "bytes"
