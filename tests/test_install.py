"""A non-editable install: the wheel adds only `gptkit` to site-packages, and every console command works from any folder."""
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import REPO, make_corpus

COMMANDS = ("gptkit-train", "gptkit-sample", "gptkit-chat", "gptkit-prepare", "gptkit-evaluate", "gptkit-export", "gptkit-plot",
            "gptkit-synthetic-chat", "gptkit-serve", "gptkit-align", "gptkit-alignment-demo")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"  # a copy: building in the checkout would leave build/ there, and reuse a stale one
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "build", "dist", "prepared", "out*", "__pycache__", "*.egg-info", "wandb"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("gptkit-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh environment with the wheel installed (not editable); its dependencies are this environment's packages."""
    env_dir = tmp_path_factory.mktemp("env")
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    with open(os.path.join(site, "dependencies.pth"), "w") as f:  # torch and the rest, without downloading them again
        f.write(ours + "\n")
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return env_dir, site


def run(env_dir, command, *args, cwd, input=None):
    env = {**os.environ, "PYTHONPATH": "", "PYTHONUNBUFFERED": "1"}
    env.pop("GPTKIT_PREPARED", None)
    return subprocess.run([str(env_dir / "bin" / command), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          input=input)


def test_the_wheel_holds_only_the_gptkit_package_and_the_top_level_files_inside_it(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"gptkit", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for inside in ("gptkit/model.py", "gptkit/train.py", "gptkit/sample.py", "gptkit/chat.py", "gptkit/evaluate.py", "gptkit/export.py",
                   "gptkit/data/prepare.py", "gptkit/config/default.py", "gptkit/engine.py", "gptkit/serve.py", "gptkit/web/chat.html",
                   "gptkit/kernels/int8_matvec.c", "gptkit/kernels/decode_step.c", "gptkit/kernels/int8_matvec.h"):
        assert inside in names


def test_every_command_runs_from_an_unrelated_folder(installed, tmp_path):
    env_dir, site = installed
    work = tmp_path / "elsewhere"
    work.mkdir()
    with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time: each is mostly importing torch
        helps = pool.map(lambda command: run(env_dir, command, "--help", cwd=work), COMMANDS)
    for command, result in zip(COMMANDS, helps):
        assert result.returncode == 0 and "usage:" in result.stdout, (command, result.stderr[-2000:])
        if command == "gptkit-train":
            assert "align_sft, chat_demo, default," in result.stdout  # the ready configs ship inside the wheel

    # the gptkit found is the installed one, not this checkout
    where = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import gptkit.model, gptkit.train; print(gptkit.model.__file__)"],
                           cwd=work, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert where.stdout.strip().startswith(site), where

    (work / "corpus.txt").write_text(make_corpus(400), encoding="utf-8")
    prepared = run(env_dir, "gptkit-prepare", "corpus.txt", "--tokenizer=bytes", "--val_fraction=0.1", cwd=work)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    (folder,) = (work / "prepared").iterdir()  # under the current folder, never in site-packages
    tiny = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--eval_tokens=512", "--sample_tokens=8",
            "--device=cpu", "--threads=1"]
    trained = run(env_dir, "gptkit-train", "--data_path=corpus.txt", "--tokenizer=bytes", "--val_fraction=0.1", "--max_iters=4",
                  "--eval_interval=2", *tiny, cwd=work)
    assert trained.returncode == 0 and "step 4: val loss" in trained.stdout, trained.stderr[-2000:]
    assert (work / "out" / "last.pt").is_file() and (work / "out" / "MODEL_CARD.md").is_file()

    sampled = run(env_dir, "gptkit-sample", "--prompt=the cat", "--max_new_tokens=8", "--seed=1", cwd=work)
    assert sampled.returncode == 0 and sampled.stdout.startswith("the cat"), sampled.stderr[-2000:]
    scored = run(env_dir, "gptkit-evaluate", f"--data={folder}", cwd=work)
    assert scored.returncode == 0 and "bits/byte" in scored.stdout, scored.stderr[-2000:]
    exported = run(env_dir, "gptkit-export", "--out_dir=exported", cwd=work)
    assert exported.returncode == 0 and (work / "exported" / "config.json").is_file(), exported.stderr[-2000:]
    chatted = run(env_dir, "gptkit-chat", "--max_new_tokens=4", "--temperature=0", cwd=work, input="hello\n")
    assert chatted.returncode == 0 and chatted.stdout.strip(), chatted.stderr[-2000:]
    conversations = run(env_dir, "gptkit-synthetic-chat", "--out=chat.jsonl", "--n=5", cwd=work)
    assert conversations.returncode == 0 and len((work / "chat.jsonl").read_text().splitlines()) == 5

    written = {p.name for p in os.scandir(site)}
    assert not written & {"model.py", "train.py", "data", "common.py", "options.py", "plot.py", "prepared", "out"}
    assert {"gptkit"} <= written
