"""Training curves from metrics.jsonl: reading the records (skipping malformed lines) and drawing the three-panel figure.

Three panels against tokens seen: training and validation loss, validation bits per byte, learning rate.
Several runs share the figure, one colour each, labelled with their folder names. Needs matplotlib.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from gptkit.errors import UsageError
from gptkit.files import atomic_write

METRICS_FILE = "metrics.jsonl"
FIGSIZE, DPI = (8, 10), 100  # inches, dots per inch: an 800 x 1000 pixel PNG
INSTALL_HINT = 'plotting needs matplotlib: pip install matplotlib (or pip install -e ".[plot]")'


@dataclass
class Run:
    label: str
    path: Path
    train: list = field(default_factory=list)  # training-log records: iter, tokens, loss, lr, ...
    evals: list = field(default_factory=list)  # evaluation records: iter, tokens, val_loss, val_bpb
    skipped: int = 0  # malformed lines


def metrics_path(path):
    """A run folder's metrics.jsonl, or the file itself."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise UsageError(f"{path} does not exist; pass a folder train.py wrote (its --out_dir) or a {METRICS_FILE} file")
    return path


def read_metrics(path):
    """(training records, evaluation records, malformed lines) of a metrics.jsonl file or run folder.

    A resumed run appends to the file and logs again the steps after its checkpoint; the later records replace the
    earlier ones, so each series runs forward once.
    """
    path = metrics_path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    records, skipped = [], 0
    for line in lines:
        if not line.strip():
            continue
        record = _parse(line)
        if record is None:
            skipped += 1  # a line cut short by a crash, or not ours
            continue
        _append(records, record)
    if not records:
        detail = f" ({skipped} malformed line{'s' * (skipped != 1)})" if skipped else ""
        raise UsageError(f"{path} holds no metrics{detail}; train.py writes a line per log and per evaluation")
    return [r for r in records if "loss" in r], [r for r in records if "val_loss" in r], skipped


def _parse(line):
    """The record a line holds, or None when it is not a training or evaluation record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not _is_number(record.get("tokens")):
        return None
    if not (_is_number(record.get("loss")) or _is_number(record.get("val_loss"))):
        return None
    if "iter" in record and not _is_number(record["iter"]):
        return None
    return record


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _append(records, record):
    """Append, first dropping what a resumed run logs again: records past this one's step, or of its kind at its step."""
    if "iter" in record:
        while records and records[-1].get("iter", -math.inf) > record["iter"]:
            records.pop()
        kind, start = "val_loss" in record, len(records)
        while start and records[start - 1].get("iter") == record["iter"]:
            start -= 1
        records[start:] = [r for r in records[start:] if ("val_loss" in r) != kind]
    records.append(record)


def labels_for(paths):
    """Each run's folder name (a file not called metrics.jsonl: its own name); the path as given where names collide."""
    runs = [p.parent if p.name == METRICS_FILE else p.with_suffix("") if p.is_file() else p for p in map(Path, paths)]
    names = [r.resolve().name for r in runs]
    return [str(r) if names.count(n) > 1 else n for r, n in zip(runs, names)]


def load_runs(paths):
    if not paths:
        raise UsageError("name at least one run folder or metrics.jsonl file: python plot.py out [out-other ...]")
    runs = []
    for path, label in zip(paths, labels_for(paths)):
        train, evals, skipped = read_metrics(path)
        runs.append(Run(label, metrics_path(path), train, evals, skipped))
    return runs


def _matplotlib():
    """The Agg canvas and Figure, imported only when plotting (matplotlib is an optional extra). Raises ImportError."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    return FigureCanvasAgg, Figure, EngFormatter


def plot_runs(paths, out_path):
    """Draw the runs' curves into out_path (written atomically) and return the runs read.

    Raises ImportError when matplotlib is missing (train.py ignores it), UsageError for a missing or empty metrics file.
    """
    runs = load_runs(paths)
    FigureCanvasAgg, Figure, EngFormatter = _matplotlib()
    out_path = Path(out_path)
    # A Figure on its own Agg canvas, not pyplot: no global backend switch and no figure left open in the caller.
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    fmt = out_path.suffix.lstrip(".").lower()
    if fmt not in canvas.get_supported_filetypes():
        raise UsageError(f"--out={out_path}: unknown image format {fmt!r}; use one of .{', .'.join(sorted(canvas.get_supported_filetypes()))}")
    loss_ax, bpb_ax, lr_ax = fig.subplots(3, 1, sharex=True)
    for run, colour in zip(runs, _colours(len(runs))):
        _line(loss_ax, run.train, "loss", colour, f"{run.label} train", linewidth=1, alpha=0.6)
        _line(loss_ax, run.evals, "val_loss", colour, f"{run.label} val", linestyle="--", marker="o", markersize=3)
        _line(bpb_ax, run.evals, "val_bpb", colour, run.label, marker="o", markersize=3)
        _line(lr_ax, run.train, "lr", colour, run.label)
    for ax, title, ylabel in ((loss_ax, "loss (solid: training, dashed: validation)", "nats per token"),
                              (bpb_ax, "validation bits per byte", "bits per byte"), (lr_ax, "learning rate", "learning rate")):
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes, color="grey")
    lr_ax.set_xlabel("tokens seen")
    lr_ax.xaxis.set_major_formatter(EngFormatter())
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    with atomic_write(out_path) as f:
        fig.savefig(f, format=fmt, dpi=DPI)
    return runs


def _colours(n):
    """matplotlib's default cycle (ten colours), then evenly spaced hues for more runs."""
    from matplotlib import colormaps, rcParams

    cycle = rcParams["axes.prop_cycle"].by_key()["color"]
    return cycle[:n] if n <= len(cycle) else [colormaps["hsv"](i / n) for i in range(n)]


def _line(ax, records, key, colour, label, **style):
    points = [(r["tokens"], r[key]) for r in records if _is_number(r.get(key)) and math.isfinite(r[key])]
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, color=colour, label=label, **style)


def plot_curves(out_dir):
    """out_dir/curves.png from its metrics.jsonl, when the optional matplotlib is installed (what train.py draws at the end)."""
    try:
        plot_runs([out_dir], out_dir / "curves.png")
        print(f"training curves: {out_dir / 'curves.png'}")
    except ImportError:
        pass  # matplotlib is an optional extra: pip install -e ".[plot]"
    except UsageError as e:
        print(f"note: no training curves ({e})")
