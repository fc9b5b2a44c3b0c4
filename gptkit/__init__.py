"""gptkit: pretrain, sample, fine-tune and chat with a decoder-only GPT.

The library the entry points share. Its modules import one another and `gptkit.model`; none imports an entry point.

The design's top-level files (model.py, train.py, sample.py, chat.py, evaluate.py, export.py, plot.py, data/, config/)
are modules of this package too: an installed wheel holds them inside gptkit/ (see setup.py), and in a source
checkout the line below lets `gptkit.model` and `gptkit.train` name the files beside this folder.
"""
from pathlib import Path

_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "model.py").is_file() and (_checkout / "pyproject.toml").is_file():
    __path__.append(str(_checkout))
