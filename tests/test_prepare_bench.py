"""bench/prepare.py at a tiny size: its figures for each size, the machine and reproduce lines, the summary lines it
ends with, and nothing left behind; a disk too small is one line before any work."""
import re

import pytest

from helpers import run_script
from test_cli import assert_one_line_error

TINY = ["--tokenizer_train_bytes=500000", "--vocab_size=300", "--tiktoken_sample_mb=0.5", "--workers=2"]
SUMMARY = re.compile(r"^prepare: gb=([\d.]+) mb_s=([\d.]+) tiktoken_ratio=([\d.]+) peak_rss_mb=(\d+)$")


def test_prepare_bench_reports_speed_memory_and_the_tiktoken_ratio_for_each_size(tmp_path):
    result = run_script("bench/prepare.py", "--sizes=0.001,0.002", f"--work_dir={tmp_path}", *TINY, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("machine: ")
    corpora = [line for line in lines if line.startswith("corpus: ")]
    assert [float(re.search(r"([\d.]+) MB in", line).group(1)) for line in corpora] == [1.0, 2.0]  # each size made exactly
    for gb in ("0.001", "0.002"):
        figures = next(line for line in lines if line.startswith(f"{gb} GB: prepare "))
        assert re.search(r"BPE training [\d.]+ s on 0\.5 MB, peak memory by then \d+ MB", figures)  # --tokenizer_train_bytes holds
        assert re.search(r"tokenizing [\d.]+ MB/s \| peak memory \d+ MB", figures)
        assert re.search(r"tiktoken encode_ordinary_batch [\d.]+ MB/s on [\d.]+ MB, 2 threads: prepare tokenizes at [\d.]+x",
                         next(line for line in lines if line.startswith(f"{gb} GB: tiktoken ")))
    assert lines[-4].startswith("peak memory by size: 0.001 GB ")
    assert lines[-3].startswith("reproduce: python bench/prepare.py --sizes=0.001,0.002 --workers=2 ")
    summaries = [SUMMARY.match(line) for line in lines[-2:]]
    assert all(summaries), lines[-2:]
    for summary, gb in zip(summaries, ("0.001", "0.002")):
        assert summary.group(1) == gb
        assert float(summary.group(2)) > 0 and float(summary.group(3)) > 0 and int(summary.group(4)) > 0
    assert list(tmp_path.iterdir()) == []  # the corpus and the prepared folder are removed


@pytest.mark.slow  # a third prepare run for CI's 15 minutes; --keep only skips the cleanup
def test_prepare_bench_keeps_its_folder_when_asked(tmp_path):
    result = run_script("bench/prepare.py", "--gb=0.001", f"--work_dir={tmp_path}", "--keep=true", *TINY, timeout=300)
    assert result.returncode == 0, result.stderr
    (kept,) = tmp_path.iterdir()
    assert f"kept: the corpus and prepare's output are in {kept}" in result.stdout
    assert (kept / "out" / "meta.json").is_file() and any((kept / "corpus").rglob("*.py.txt"))
    assert SUMMARY.match(result.stdout.splitlines()[-1])


def test_prepare_bench_checks_free_disk_first(tmp_path):
    assert_one_line_error(run_script("bench/prepare.py", "--gb=1e5", f"--work_dir={tmp_path}"), "GB free", "--work_dir")
    assert list(tmp_path.iterdir()) == []
