"""Plot training curves from metrics.jsonl: python plot.py RUN_DIR_OR_METRICS_JSONL [MORE ...] [--out=curves.png]

Three panels against tokens seen: training and validation loss, validation bits per byte, learning rate.
Several runs share the figure, one colour each, labelled with their folder names. Needs matplotlib
(`pip install matplotlib`, or `pip install -e ".[plot]"`).
"""
from dataclasses import dataclass

from gptkit.errors import UsageError, run_cli
from gptkit.files import check_output
from gptkit.options import option, parse_options
from gptkit.plotting import INSTALL_HINT, plot_runs


@dataclass
class PlotConfig:
    runs: list[str] = option([], "run folders (train.py's --out_dir) or metrics.jsonl files")
    out: str = option("curves.png", "the image to write; its extension picks the format (.png, .svg, .pdf)")


def main():
    cfg = parse_options(PlotConfig, description=__doc__, positional="runs")
    check_output(cfg.out, "out")
    try:
        runs = plot_runs(cfg.runs, cfg.out)
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    for run in runs:
        if run.skipped:
            print(f"note: {run.path}: skipped {run.skipped} malformed line{'s' * (run.skipped != 1)}")
    listed = "; ".join(f"{r.label}: {len(r.train)} training and {len(r.evals)} validation points" for r in runs)
    print(f"wrote {cfg.out} ({listed})")


def cli():
    """The gptkit-plot command, and `python plot.py`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
