"""The wheel puts the design's top-level files inside the gptkit package: see "Layout" in docs/layout.md.

In a source checkout model.py, train.py, ... sit at the top, where a reader looks for them, and gptkit/__init__.py lets
`gptkit.model` and `gptkit.train` name them. An installed wheel must not add generic top-level names such as `model`,
`train` or `data` to site-packages, so this build step copies those files into gptkit/ (gptkit/model.py,
gptkit/data/prepare.py, gptkit/config/default.py, ...), where the same import names find them.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
TOP_LEVEL = ["model.py", "train.py", "sample.py", "chat.py", "evaluate.py", "export.py", "plot.py", "serve.py", "align.py",
             "data/__init__.py", "data/prepare.py", "data/synthetic_chat.py", "data/alignment_demo.py",
             *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "config").glob("*"))]


class BuildWithTopLevelFiles(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # an editable install imports them from the checkout (gptkit/__init__.py)
            return
        for name in TOP_LEVEL:
            target = Path(self.build_lib) / "gptkit" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(ROOT / name), str(target), preserve_mode=False)


setup(cmdclass={"build_py": BuildWithTopLevelFiles})
