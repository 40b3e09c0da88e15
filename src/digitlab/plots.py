"""Figures for understanding a model (matplotlib, Agg backend, PNG) and the per-run `report.md`.

    from digitlab import plots
    plots.plot_curves("runs/mlp", "curves.png")                      # loss + accuracy per epoch
    plots.plot_weights(model, "weights.png")                          # linear templates / first-layer units
    plots.plot_confusion(model, images, labels, "confusion.png")      # counts + row-normalised
    plots.plot_mistakes(model, images, labels, "mistakes.png", n=36)  # most confident mistakes
    plots.plot_samples(images, labels, "samples.png", per_class=10)   # a grid of examples per class
    plots.plot_augment(images, "augment.png", rotate=12, scale=0.1, translate=2, flip=True)  # originals | copies
    plots.plot_filters(cnn, "filters.png")                            # first convolution layer's kernels
    plots.plot_activations(cnn, image, "activations.png")             # feature maps of each conv layer
    plots.write_run_report("runs/mlp", model, test_images, test_labels)  # all of the above + report.md

or from the shell: `digitlab plot {curves,weights,filters,activations,confusion,mistakes,samples,augment} ...` (see `digitlab.commands.plot`).

Every figure has a fixed pixel size (`FIGURE_PIXELS`, at `DPI`), whatever the data, so a figure can be
checked and laid out without opening it. Figures are `matplotlib.figure.Figure` objects rendered with the
Agg canvas: no pyplot, no global state shared between calls. PNGs are rendered into memory and written
atomically. Image grids (templates, units, mistakes, samples) are drawn as one montage image per panel,
which keeps a full run report well under two seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitlab.errors import ConfigError, DataError, DigitlabError
from digitlab.fsutil import atomic_write_bytes, atomic_write_text

DPI = 100
# Pixel size (width, height) of every figure kind; the figure size in inches is this / DPI.
FIGURE_PIXELS = {
    "curves": (1000, 400),
    "weights": (1000, 480),  # linear model: one 28x28 template per class
    "units": (800, 860),  # MLP: a grid of first-layer units
    "confusion": (1200, 560),
    "mistakes": (1000, 1000),
    "samples": (800, 800),
    "augment": (900, 900),
    "filters": (800, 620),  # CNN: first-layer kernels
    "activations": (1000, 1000),  # CNN: feature maps of each conv layer for one input
}
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")
SIDE = 28  # MNIST images are SIDE x SIDE pixels
MAX_UNITS = 64
MAX_MAPS = 32  # feature maps drawn per conv layer
ROW_GAP = 2  # montage rows between two tiles stacked vertically


@dataclass(frozen=True)
class Plot:
    """A PNG written to `path`, `width` x `height` pixels."""

    path: Path
    width: int
    height: int

    def as_dict(self) -> dict:
        return {"path": str(self.path), "width": self.width, "height": self.height}


# --------------------------------------------------------------------------------------------- numbers
def confusion_matrix(labels, predictions, n_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class -> int64 (n_classes, n_classes)."""
    labels = np.asarray(labels, dtype=np.int64)  # (N,)
    predictions = np.asarray(predictions, dtype=np.int64)  # (N,)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ in shape")
    for name, values in (("label", labels), ("prediction", predictions)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            bad = int(values.max()) if values.max() >= n_classes else int(values.min())
            raise DataError(f"{name} {bad} is outside the model's {n_classes} classes (0..{n_classes - 1})")
    flat = labels * n_classes + predictions  # (N,) index into the flattened matrix
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def row_normalize(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (a row with no samples stays 0) -> float64 (C, C)."""
    totals = counts.sum(axis=1, keepdims=True)  # (C, 1)
    return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)


def confident_mistakes(proba, labels, n: int) -> np.ndarray:
    """Indices of the `n` wrong predictions with the highest predicted probability, most confident first."""
    proba = np.asarray(proba)  # (N, C)
    labels = np.asarray(labels, dtype=np.int64)  # (N,)
    predicted = proba.argmax(axis=1)  # (N,)
    wrong = np.flatnonzero(predicted != labels)  # (M,)
    confidence = proba[wrong, predicted[wrong]]  # (M,)
    order = np.argsort(-confidence, kind="stable")[: max(n, 0)]  # (min(n, M),)
    return wrong[order]


def per_class_accuracy(counts: np.ndarray) -> np.ndarray:
    """Diagonal / row sums of a confusion matrix (NaN for a class with no samples) -> float64 (C,)."""
    totals = counts.sum(axis=1)  # (C,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(counts) / np.maximum(totals, 1), np.nan)


# --------------------------------------------------------------------------------------------- history
def read_history(path) -> dict[str, np.ndarray]:
    """history.csv (or the run folder holding it) -> {column: float64 (E,)}; empty cells become NaN."""
    path = Path(path)
    if path.suffix.lower() != ".csv":  # a run folder
        if not path.is_dir():
            raise DataError(f"{path}: run folder not found")
        path = path / "history.csv"
    if not path.is_file():
        raise DataError(f"{path}: no history.csv here (is this a digitlab run folder?)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read history ({exc})") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise DataError(f"{path}: empty history file (expected a header row {','.join(HISTORY_COLUMNS)})")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in ("epoch", "train_loss", "train_accuracy") if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} in header {','.join(header)}")
    body = [r for r in rows[1:] if any(cell.strip() for cell in r)]
    if not body:
        raise DataError(f"{path}: no epochs recorded yet")
    columns = {name: np.full(len(body), np.nan) for name in header}
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise DataError(f"{path}: line {i + 2} has {len(row)} fields, expected {len(header)}")
        for name, cell in zip(header, row):
            cell = cell.strip()
            if cell:
                try:
                    columns[name][i] = float(cell)
                except ValueError:
                    raise DataError(f"{path}: line {i + 2}, column {name}: {cell!r} is not a number") from None
    return columns


# --------------------------------------------------------------------------------------------- drawing
def _figure(kind: str):
    from matplotlib.figure import Figure

    width, height = FIGURE_PIXELS[kind]
    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI)


def _save(fig, kind: str, out) -> Plot:
    """Render `fig` to PNG in memory and write it atomically to `out`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = Path(out)
    if out.is_dir():
        raise DigitlabError(f"{out}: is a folder; give a file name such as {out / (kind + '.png')}")
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    try:
        atomic_write_bytes(out, buffer.getvalue())
    except OSError as exc:
        raise DigitlabError(f"{out}: cannot write the plot ({exc.strerror or exc})") from None
    width, height = FIGURE_PIXELS[kind]
    return Plot(out, width, height)


def _montage(tiles: np.ndarray, ncols: int, pad: int, top: int, fill: float) -> np.ndarray:
    """(K, h, w) tiles -> one (rows*(top+h+2), ncols*(w+pad)) image; `top` rows above each tile hold a title,
    `pad` columns separate tiles side by side, 2 rows separate them top to bottom."""
    k, h, w = tiles.shape
    rows = max(1, math.ceil(k / ncols))
    cell_h, cell_w = top + h + ROW_GAP, w + pad
    canvas = np.full((rows * cell_h, ncols * cell_w), fill, dtype=np.float32)
    for i in range(k):  # K <= a few hundred tiles: one slice assignment each
        r, c = divmod(i, ncols)
        canvas[r * cell_h + top : r * cell_h + top + h, c * cell_w : c * cell_w + w] = tiles[i]
    return canvas


def _tile_titles(ax, titles, ncols: int, h: int, w: int, pad: int, top: int, fontsize: float, colors=None):
    for i, title in enumerate(titles):
        r, c = divmod(i, ncols)
        x = c * (w + pad) + w / 2 - 0.5
        y = r * (top + h + ROW_GAP) + top - 1.0
        ax.text(x, y, title, ha="center", va="bottom", fontsize=fontsize,
                color=None if colors is None else colors[i])


def _bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _as_images(images) -> np.ndarray:
    """uint8/float images [N,28,28] or [N,784] -> float32 [N,28,28] in the image's own scale."""
    arr = np.asarray(images)
    if arr.ndim == 2 and arr.shape[1] == SIDE * SIDE:
        arr = arr.reshape(-1, SIDE, SIDE)  # (N, 784) -> (N, 28, 28)
    if arr.ndim != 3 or arr.shape[1:] != (SIDE, SIDE):
        raise DataError(f"expected images of shape (N, 28, 28) or (N, 784), got {arr.shape}")
    return arr.astype(np.float32, copy=False)


def _class_names(model, n: int) -> list[str]:
    names = list(getattr(model, "class_names", None) or [])
    return names if len(names) == n else [str(i) for i in range(n)]


def curve_series(hist: dict[str, np.ndarray], metric: str) -> list[tuple[str, np.ndarray]]:
    """[(name, values (E,))] of `metric` ("loss" or "accuracy") for train, validation and test, leaving out
    the columns a history lacks or left empty."""
    series = []
    for split, name in (("train", "train"), ("val", "validation"), ("test", "test")):
        values = hist.get(f"{split}_{metric}")
        if values is not None and not np.all(np.isnan(values)):
            series.append((name, values))
    return series


def plot_curves(run_dir, out) -> Plot:
    """Loss and accuracy per epoch (train, and validation/test where recorded) from RUN_DIR/history.csv."""
    hist = read_history(run_dir)
    epochs = hist["epoch"]  # (E,)
    fig = _figure("curves")
    ax_loss, ax_acc = fig.subplots(1, 2)
    styles = {"train": "-o", "validation": "-s", "test": "-^"}
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        for name, values in curve_series(hist, metric):
            ax.plot(epochs, values, styles[name], markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
    ax_loss.set_title("loss per epoch")
    ax_acc.set_title("accuracy per epoch")
    fig.suptitle(Path(run_dir).name if Path(run_dir).is_dir() else Path(run_dir).parent.name)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.85, wspace=0.25)  # fixed: no tight_layout pass
    return _save(fig, "curves", out)


def _first_layer_weights(model) -> tuple[np.ndarray, int]:
    """(784, K) weights of the first layer that has them, and how many layers have weights."""
    layers = [layer for layer in getattr(getattr(model, "net", None), "layers", []) if hasattr(layer, "W")]
    if not layers:
        raise DigitlabError("this model has no layer with weights to draw")
    from digitlab.nn.backend import to_numpy  # weights may live on a GPU

    W = to_numpy(layers[0].W)
    if W.ndim != 2 or W.shape[0] != SIDE * SIDE:
        raise DigitlabError(f"first-layer weights have shape {W.shape}; only (784, K) pixel weights can be drawn")
    return W.astype(np.float32, copy=False), len(layers)


def plot_weights(model, out, max_units: int = MAX_UNITS) -> Plot:
    """Linear model: one 28x28 template per class on a diverging colormap centred on 0 (shared scale).
    Deeper model: the first `max_units` first-layer units, each scaled to its own max |w|, centred on 0."""
    W, n_weighted = _first_layer_weights(model)  # (784, K)
    if n_weighted == 1:
        return _plot_templates(W, _class_names(model, W.shape[1]), out)
    return _plot_units(W[:, :max_units], W.shape[1], out)


def _plot_templates(W: np.ndarray, names: list[str], out) -> Plot:
    tiles = W.T.reshape(-1, SIDE, SIDE)  # (784, C) -> (C, 28, 28)
    limit = float(np.abs(W).max()) or 1.0
    ncols = min(5, len(tiles))
    pad, top = 3, 7
    fig = _figure("weights")
    ax = fig.add_axes((0.01, 0.02, 0.88, 0.86))
    image = ax.imshow(_montage(tiles, ncols, pad, top, 0.0), cmap="RdBu_r", vmin=-limit, vmax=limit,
                      interpolation="nearest")
    _tile_titles(ax, [f"class {n}" for n in names], ncols, SIDE, SIDE, pad, top, fontsize=11)
    _bare(ax)
    cax = fig.add_axes((0.91, 0.1, 0.02, 0.72))
    fig.colorbar(image, cax=cax, label="weight")
    fig.suptitle("weight template per class (red = evidence for, blue = against)")
    return _save(fig, "weights", out)


def _plot_units(W: np.ndarray, total: int, out) -> Plot:
    scale = np.abs(W).max(axis=0, keepdims=True)  # (1, K)
    tiles = (W / np.where(scale > 0, scale, 1.0)).T.reshape(-1, SIDE, SIDE)  # (784, K) -> (K, 28, 28) in [-1, 1]
    ncols = math.ceil(math.sqrt(len(tiles)))
    fig = _figure("units")
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.91))
    ax.imshow(_montage(tiles, ncols, 2, 0, 0.0), cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
    _bare(ax)
    fig.suptitle(f"first {len(tiles)} of {total} first-layer units (each scaled to its own max |w|; red +, blue -)")
    return _save(fig, "units", out)


def conv_layers(model) -> list:
    """[(index, layer)] of the model's Conv2D layers, in order (empty for an MLP)."""
    from digitlab.nn.layers import Conv2D

    return [(i, layer) for i, layer in enumerate(getattr(getattr(model, "net", None), "layers", []))
            if isinstance(layer, Conv2D)]


def first_filters(model) -> np.ndarray:
    """(F, k, k) kernels of the first Conv2D layer (averaged over its input channels when it has several)."""
    from digitlab.nn.backend import to_numpy

    convs = conv_layers(model)
    if not convs:
        raise DigitlabError("this model has no convolution layer (plot weights draws an MLP's first layer)")
    W = to_numpy(convs[0][1].W).astype(np.float32)  # (k, k, C, F)
    return W.mean(axis=2).transpose(2, 0, 1)  # (k, k, F) -> (F, k, k)


def plot_filters(model, out, max_filters: int = MAX_UNITS) -> Plot:
    """The first convolution layer's kernels, one tile each, each scaled to its own max |w| and centred on 0."""
    kernels = first_filters(model)  # (F, k, k)
    total, k = len(kernels), kernels.shape[1]
    tiles = kernels[:max_filters]
    scale = np.abs(tiles).max(axis=(1, 2), keepdims=True)  # (F, 1, 1)
    tiles = tiles / np.where(scale > 0, scale, 1.0)  # in [-1, 1]
    ncols = math.ceil(math.sqrt(len(tiles)))
    fig = _figure("filters")
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.88))
    ax.imshow(_montage(tiles, ncols, 1, 0, 0.0), cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
    _bare(ax)
    channels = conv_layers(model)[0][1].W.shape[2]
    fig.suptitle(f"first-layer filters: {len(tiles)} of {total}, {k}x{k}"
                 + (f", mean over {channels} input channels" if channels > 1 else "")
                 + " (each scaled to its own max |w|; red +, blue -)")
    return _save(fig, "filters", out)


def feature_maps(model, image, layers: int | None = None) -> list[tuple[str, np.ndarray]]:
    """[(label, (H, W, F) maps)]: the raw output of each Conv2D layer (of the first `layers` of them; None: all)
    for one image (uint8 28x28 or floats in [0, 1]), in inference mode (fresh buffers, no training caches)."""
    from digitlab.nn.backend import to_numpy

    convs = dict(conv_layers(model))
    if not convs:
        raise DigitlabError("this model has no convolution layer, so no feature maps to draw")
    last = sorted(convs)[: layers or len(convs)][-1]  # index of the last conv layer to run to
    h = model.prepare(np.asarray(image)[None])  # (1, *input_shape), normalised like training
    maps = []
    for i, layer in enumerate(model.net.layers[: last + 1]):
        h = layer.forward(h, train=False)
        if i in convs:
            maps.append((f"layer {i}: Conv2D {layer.filters}@{layer.kernel}x{layer.kernel}", to_numpy(h[0])))
    return maps


def scale_maps(maps: np.ndarray) -> np.ndarray:
    """(F, H, W) maps -> float32 (F, H, W), each scaled by its own min and max to [0, 1] (a flat map is all 0)."""
    maps = np.asarray(maps, dtype=np.float32)
    lo, hi = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)  # (F, 1, 1)
    return (maps - lo) / np.where(hi > lo, hi - lo, 1.0)


def plot_activations(model, image, out, max_maps: int = MAX_MAPS, title: str = "") -> Plot:
    """The input image, then one panel per conv layer with its first `max_maps` feature maps (each map
    scaled to its own range: bright = strong response)."""
    maps = feature_maps(model, image)
    fig = _figure("activations")
    rows = len(maps) + 1
    ax = fig.add_axes((0.40, 1 - 0.9 / rows, 0.2, 0.9 / rows - 0.1))  # below the title
    ax.imshow(_as_images(np.asarray(image)[None])[0], cmap="gray_r", interpolation="nearest")
    ax.set_title("input", fontsize=10)
    _bare(ax)
    for r, (label, m) in enumerate(maps, 1):
        tiles = scale_maps(m.transpose(2, 0, 1)[:max_maps])  # (H, W, F) -> (F', H, W), each map in [0, 1]
        ax = fig.add_axes((0.02, 1 - 0.9 * (r + 1) / rows - 0.02, 0.96, 0.9 / rows - 0.04))
        ax.imshow(_montage(tiles, min(16, len(tiles)), 1, 0, 0.0), cmap="gray_r", vmin=0.0, vmax=1.0,
                  interpolation="nearest")
        ax.set_title(f"{label}: {len(tiles)} of {m.shape[2]} maps, {m.shape[0]}x{m.shape[1]}", fontsize=10)
        _bare(ax)
    fig.suptitle(title or "feature maps of each convolution layer")
    return _save(fig, "activations", out)


DIAGONAL_COLOUR = "#cfe0f3"  # the row-normalised panel's diagonal (right answers): one calm colour, value printed


def confusion_figure(counts: np.ndarray, names: list[str], title: str = ""):
    """The confusion figure: raw counts (log colour scale) and row-normalised fractions (rows = true class,
    columns = predicted). In the fractions panel the errors get a colour scale of their own (0 .. the largest
    off-diagonal fraction), so a 0.2 % confusion is visible next to a 99 % diagonal; the diagonal is drawn in
    one separate colour with its value printed, and cells that never happened stay background."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap, PowerNorm
    from matplotlib.ticker import PercentFormatter

    fractions = row_normalize(counts)  # (C, C)
    c = counts.shape[0]
    diagonal = np.eye(c, dtype=bool)  # (C, C)
    errors = np.ma.masked_where(diagonal | (counts == 0), fractions)  # (C, C): only the confusions that happened
    worst = float(errors.max()) if errors.count() else 1.0
    error_cmap = ListedColormap(colormaps["OrRd"](np.linspace(0.2, 1.0, 256)))  # its lightest is still clearly tinted
    error_norm = PowerNorm(0.5, vmin=0.0, vmax=worst)  # square root: small confusions stand out from zero
    fig = _figure("confusion")
    axes = fig.subplots(1, 2)
    fontsize = 8 if c <= 10 else 6
    shown = np.log1p(counts)  # log colour scale: the diagonal dwarfs errors
    axes[0].imshow(shown, cmap="Blues", interpolation="nearest")
    threshold = shown.max() / 2 if shown.max() > 0 else 1
    for i, j in zip(*np.nonzero(counts)):  # blank cells stay blank
        axes[0].text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=fontsize,
                     color="white" if shown[i, j] > threshold else "black")
    ax = axes[1]
    ax.imshow(np.ma.masked_where(~diagonal, np.ones((c, c))), cmap=ListedColormap([DIAGONAL_COLOUR]),
              interpolation="nearest")
    image = ax.imshow(errors, cmap=error_cmap, norm=error_norm, interpolation="nearest")
    for i in range(c):
        for j in range(c):
            if i == j and counts[i].sum() > 0:
                ax.text(j, i, f"{fractions[i, j]:.3f}", ha="center", va="center", fontsize=fontsize,
                        fontweight="bold", color="#0b3a6e")
            elif i != j and counts[i, j] > 0:
                ax.text(j, i, _share(fractions[i, j]), ha="center", va="center", fontsize=fontsize,
                        color="white" if error_norm(fractions[i, j]) > 0.6 else "black")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="errors: share of the true class")
    bar.ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    for ax, name in zip(axes, ("counts", "row-normalised (diagonal: right answers)")):
        ax.set_xticks(range(c), names)
        ax.set_yticks(range(c), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
    accuracy = np.trace(counts) / max(int(counts.sum()), 1)
    fig.suptitle(f"{title + ': ' if title else ''}{int(counts.sum())} images, accuracy {accuracy:.2%}")
    fig.subplots_adjust(left=0.04, right=0.92, bottom=0.1, top=0.88, wspace=0.12)  # fixed: no tight_layout pass
    return fig


def _share(fraction: float) -> str:
    """An error's share of its row, short enough for a cell: 0.0042 -> '.004', 0.0001 -> '<.001', 1.0 -> '1'."""
    if fraction >= 0.9995:
        return "1"
    return "<.001" if fraction < 0.0005 else f"{fraction:.3f}".lstrip("0")


def plot_confusion_matrix(counts: np.ndarray, names: list[str], out, title: str = "") -> Plot:
    """Two panels: raw counts and row-normalised fractions (see `confusion_figure`)."""
    return _save(confusion_figure(counts, names, title), "confusion", out)


def plot_confusion(model, images, labels, out, title: str = "") -> Plot:
    """Confusion matrix of `model` on (images, labels): counts and row-normalised."""
    predictions = np.asarray(model.predict(images))  # (N,)
    n_classes = len(_class_names(model, 0)) or int(max(predictions.max(initial=0), np.max(labels, initial=0)) + 1)
    names = _class_names(model, n_classes)
    return plot_confusion_matrix(confusion_matrix(labels, predictions, n_classes), names, out, title)


def plot_mistakes_from_proba(images, labels, proba, names: list[str], out, n: int = 36) -> Plot:
    """The `n` most confident mistakes, each titled "true 4 → pred 9 (0.98)", most confident first."""
    proba = np.asarray(proba)  # (N, C)
    labels = np.asarray(labels, dtype=np.int64)  # (N,)
    index = confident_mistakes(proba, labels, n)  # (K,)
    predicted = proba[index].argmax(axis=1)  # (K,)
    fig = _figure("mistakes")
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.93))
    _bare(ax)
    if len(index) == 0:
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=16, transform=ax.transAxes)
    else:
        tiles = _as_images(images)[index]  # (K, 28, 28)
        ncols = max(1, math.ceil(math.sqrt(n)))
        pad, top = 9, 7  # wide gaps: each title is wider than its 28-px digit
        ax.imshow(_montage(tiles, ncols, pad, top, 0.0), cmap="gray_r", interpolation="nearest",
                  vmin=0, vmax=float(tiles.max()) or 1.0)
        titles = [f"true {names[t]} → pred {names[p]} ({proba[i, p]:.2f})"
                  for i, t, p in zip(index, labels[index], predicted)]
        longest = max(len(t) for t in titles)  # "true 4 → pred 9 (0.98)" is 22 characters; class names can be longer
        _tile_titles(ax, titles, ncols, SIDE, SIDE, pad, top, fontsize=min(8.0, 48.0 / ncols * 22 / max(longest, 22)))
    wrong = int((proba.argmax(axis=1) != labels).sum())
    fig.suptitle(f"{len(index)} most confident of {wrong} mistakes on {len(labels)} images")
    return _save(fig, "mistakes", out)


def plot_mistakes(model, images, labels, out, n: int = 36) -> Plot:
    """The `n` most confident mistakes of `model` on (images, labels)."""
    proba = np.asarray(model.predict_proba(images))  # (N, C)
    return plot_mistakes_from_proba(images, labels, proba, _class_names(model, proba.shape[1]), out, n)


def plot_samples(images, labels, out, per_class: int = 10, class_names: list[str] | None = None,
                 title: str = "") -> Plot:
    """A grid with one row per class (its name as the row label) and the first `per_class` examples of it."""
    images = _as_images(images)  # (N, 28, 28)
    labels = np.asarray(labels, dtype=np.int64)  # (N,)
    if per_class < 1:
        raise DigitlabError(f"--per-class must be at least 1, got {per_class}")
    n_classes = len(class_names) if class_names else int(labels.max(initial=-1)) + 1
    names = list(class_names) if class_names else [str(i) for i in range(n_classes)]
    pad = 2
    tiles = np.zeros((n_classes * per_class, SIDE, SIDE), dtype=np.float32)  # (C*K, 28, 28)
    for c in range(n_classes):  # one vectorised pick per class
        picked = np.flatnonzero(labels == c)[:per_class]
        tiles[c * per_class : c * per_class + len(picked)] = images[picked]
    fig = _figure("samples")
    ax = fig.add_axes((0.14, 0.02, 0.84, 0.9))  # room on the left for names like "Ankle boot"
    ax.imshow(_montage(tiles, per_class, pad, 0, 0.0), cmap="gray_r", interpolation="nearest",
              vmin=0, vmax=float(tiles.max()) or 1.0)
    _bare(ax)
    ax.set_yticks([c * (SIDE + ROW_GAP) + SIDE / 2 - 0.5 for c in range(n_classes)], names)
    ax.tick_params(axis="y", length=0, labelsize=10)
    fig.suptitle(title or f"{per_class} examples per class")
    return _save(fig, "samples", out)


def augment_grid(images, copies: int = 5, seed: int = 0, **augmentation) -> np.ndarray:
    """(N, 1 + copies, 28, 28) float32 pixels: each image followed by `copies` augmented versions of it, made by
    the training pipeline itself (`batches` with the recipe's shift / rotate / scale / translate / flip keywords)."""
    from digitlab.data.dataset import batches

    if copies < 1:
        raise DigitlabError(f"--copies must be at least 1, got {copies}")
    x = np.asarray(images)
    if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE) or x.dtype != np.uint8:
        raise DataError(f"expected uint8 images of shape (N, 28, 28), got {x.dtype} {x.shape}")
    repeated = np.repeat(x, copies, axis=0)  # (N*copies, 28, 28)
    moved, _ = next(batches(repeated, np.zeros(len(repeated), np.int64), len(repeated), order="sequential",
                            rng=np.random.default_rng(seed), scheme="raw", **augmentation))  # (N*copies, 784)
    grid = np.empty((len(x), 1 + copies, SIDE, SIDE), dtype=np.float32)
    grid[:, 0] = x
    grid[:, 1:] = moved.reshape(len(x), copies, SIDE, SIDE)
    return grid


def plot_augment(images, out, copies: int = 5, seed: int = 0, title: str = "", **augmentation) -> Plot:
    """A grid: one row per image, the original on the left, `copies` augmented versions to its right."""
    grid = augment_grid(images, copies, seed, **augmentation)  # (N, 1 + copies, 28, 28)
    fig = _figure("augment")
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.92))
    ax.imshow(_montage(grid.reshape(-1, SIDE, SIDE), 1 + copies, 2, 0, 0.0), cmap="gray_r",
              interpolation="nearest", vmin=0, vmax=255)
    _bare(ax)
    settings = ", ".join(k if isinstance(v, bool) else f"{k} {v:g}" for k, v in augmentation.items() if v) \
        or "no augmentation"
    fig.suptitle(title or f"original | {copies} augmented copies ({settings})")
    return _save(fig, "augment", out)


# --------------------------------------------------------------------------------------------- report
FIGURE_FILES = ("curves.png", "weights.png", "confusion.png", "mistakes.png")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return f"[{len(value)} values]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)[:120]
    return str(value)


METRIC_ORDER = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_accuracy", "train_loss", "target",
                "reported", "reported_metric", "epochs", "steps", "seconds")
PERCENT_METRICS = ("test_accuracy", "val_accuracy", "train_accuracy", "target", "reported")
NOT_METRICS = ("run_dir", "model_path", "recipe", "per_class", "history", "epoch_seconds")


def _pct(fraction) -> str:
    """0.97851 -> '97.85 %', as the CLI prints accuracies."""
    return f"{100 * fraction:.2f} %"


def _metric_rows(summary: dict, model_metrics: dict, accuracy: float, n: int) -> list[tuple[str, str, str]]:
    """One row per metric: its value and where it was found (summary.json, the model file, or both)."""
    rows = [("test accuracy (computed for this report)", _pct(accuracy), f"{n} test images")]
    keys = [k for k in METRIC_ORDER if k in summary or k in model_metrics]
    keys += sorted(k for k in {*summary, *model_metrics} if k not in METRIC_ORDER)
    for key in keys:
        if key in NOT_METRICS:
            continue
        found = {src: m[key] for src, m in (("summary.json", summary), ("model file", model_metrics))
                 if m.get(key) is not None and not isinstance(m.get(key), (dict, list))}
        if not found:
            continue
        fmt = _pct if key in PERCENT_METRICS else _fmt
        values = {fmt(v) for v in found.values()}
        if len(values) == 1:
            rows.append((key, values.pop(), " + ".join(found)))
        else:  # the two disagree: show both rather than pick one
            rows += [(key, fmt(v), src) for src, v in found.items()]
    return rows


def write_run_report(run_dir, model, test_images, test_labels, n_mistakes: int = 36) -> Path:
    """Write curves.png (when history.csv exists), weights.png (CNN: filters.png and activations.png),
    confusion.png, mistakes.png, report.md and report.html (the same, one self-contained page)
    into `run_dir`; returns the path of report.md. One predict pass is shared by the confusion matrix,
    the mistakes and the per-class table."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run folder not found")
    labels = np.asarray(test_labels, dtype=np.int64)  # (N,)
    if len(labels) == 0 or len(labels) != len(test_images):
        raise DataError(f"{run_dir}: cannot report on {len(test_images)} test images with {len(labels)} labels")
    proba = np.asarray(model.predict_proba(test_images))  # (N, C)
    predictions = proba.argmax(axis=1)  # (N,)
    names = _class_names(model, proba.shape[1])
    counts = confusion_matrix(labels, predictions, proba.shape[1])  # (C, C)
    accuracy = float(np.trace(counts) / max(len(labels), 1))

    figures: dict[str, str] = {}
    history_note = ""
    if (run_dir / "history.csv").is_file():
        plot_curves(run_dir, run_dir / "curves.png")
        figures["Learning curves"] = "curves.png"
    else:
        history_note = "_No history.csv in this folder, so no learning curves._\n\n"
    if conv_layers(model):  # a CNN: its first-layer kernels and the feature maps of the first test image
        plot_filters(model, run_dir / "filters.png")
        figures["First-layer filters"] = "filters.png"
        plot_activations(model, test_images[0], run_dir / "activations.png",
                         title=f"feature maps for the first test image (label {names[labels[0]]})")
        figures["Feature maps (first test image)"] = "activations.png"
    else:
        try:
            plot_weights(model, run_dir / "weights.png")
            figures["Weights"] = "weights.png"
        except DigitlabError as exc:  # a first layer that cannot be drawn: the report goes on without it
            history_note += f"_Weights not drawn: {exc}._\n\n"
    plot_confusion_matrix(counts, names, run_dir / "confusion.png", title="test set")
    figures["Confusion matrix (test set)"] = "confusion.png"
    plot_mistakes_from_proba(test_images, labels, proba, names, run_dir / "mistakes.png", n_mistakes)
    figures["Most confident mistakes"] = "mistakes.png"

    metadata = getattr(model, "metadata", {}) or {}
    summary = _read_json(run_dir / "summary.json")
    config = _read_json(run_dir / "config.json") or metadata.get("recipe_config") or {}
    config = config if isinstance(config, dict) else {}
    text = _report_markdown(run_dir.name, metadata, summary, config, counts, names, accuracy, len(labels),
                            figures, history_note)
    atomic_write_text(run_dir / "report.html", report_html(run_dir.name, text, run_dir, figures.values()))
    return atomic_write_text(run_dir / "report.md", text)


HTML_STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.4}"
              "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}"
              "img{max-width:100%}pre{background:#f4f4f4;padding:.6em;overflow-x:auto}")


def report_html(title: str, markdown: str, folder: Path, images) -> str:
    """report.md as one self-contained HTML page: each linked PNG in `images` (names in `folder`) embedded."""
    import base64
    import html

    from markdown_it import MarkdownIt

    for name in images:  # the link ](name) becomes a data: URI, so the page opens anywhere on its own
        data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
        markdown = markdown.replace(f"]({name})", f"](data:image/png;base64,{data})")
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{HTML_STYLE}</style></head>\n<body>\n{body}</body></html>\n")


def _report_markdown(name, metadata, summary, config, counts, names, accuracy, n, figures, note) -> str:
    lines = [f"# Run report: {name}", ""]
    recipe = metadata.get("recipe") if isinstance(metadata.get("recipe"), str) else config.get("name")
    facts = [("recipe", recipe), ("loss", metadata.get("loss")), ("normalization", metadata.get("normalization")),
             ("dataset", metadata.get("dataset")), ("seed", metadata.get("seed"))]
    facts = [(k, v) for k, v in facts if v not in (None, "", {})]
    if facts:
        lines += [", ".join(f"**{k}**: {_fmt(v)}" for k, v in facts), ""]
    lines += _verdict_lines(config, summary, accuracy)
    lines += ["## Metrics", "", "| metric | value | source |", "|---|---|---|"]
    model_metrics = metadata.get("metrics") if isinstance(metadata.get("metrics"), dict) else {}
    lines += [f"| {k} | {v} | {s} |" for k, v, s in _metric_rows(summary, model_metrics, accuracy, n)]
    lines += ["", "## Per-class accuracy (test set)", "", "| class | accuracy | images | most often mistaken for |",
              "|---|---|---|---|"]
    per_class = per_class_accuracy(counts)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    for c, name in enumerate(names):
        worst = int(off[c].argmax())
        confused = f"{names[worst]} ({int(off[c, worst])}×)" if off[c, worst] > 0 else "—"
        acc = "—" if np.isnan(per_class[c]) else _pct(per_class[c])
        lines.append(f"| {name} | {acc} | {int(counts[c].sum())} | {confused} |")
    lines += ["", "## Figures", "", note.rstrip("\n")] if note else ["", "## Figures", ""]
    for title, file in figures.items():
        lines += [f"### {title}", "", f"![{title}]({file})", ""]
    if config:
        lines += ["## Recipe / configuration", "", "```json", json.dumps(config, indent=2, sort_keys=True,
                                                                              default=str), "```", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def recipe_overrides(config: dict) -> dict[str, tuple]:
    """{field: (this run's value, the shipped recipe's value)} for each field a run's config changed from the
    shipped recipe of the same name; {} for a recipe that is not shipped (a .toml file: nothing to compare).
    A field the recipe's own [datasets.<run's data set>] table set is not an override; the data set itself is
    compared with the recipe's plain one."""
    from digitlab.recipes import load_recipe, recipe_names

    name = config.get("name")
    if name not in recipe_names():
        return {}
    plain = load_recipe(name)
    dataset = config.get("dataset", plain.dataset)
    base = json.loads(json.dumps(dataclasses.asdict(load_recipe(name, {"dataset": dataset}))))  # tuples -> lists
    base["dataset"] = plain.dataset
    return {k: (v, base.get(k)) for k, v in config.items() if k in base and v != base[k]}


def _verdict_lines(config: dict, summary: dict, accuracy: float) -> list[str]:
    """The overrides of the run, and ok / MISSED against the recipe's target as `reproduce` judges it."""
    from digitlab.recipes import make_recipe
    from digitlab.reproduce import judge

    try:
        recipe = make_recipe(config, "config.json")
    except (ConfigError, TypeError):
        return []  # no readable recipe (a bare model file): nothing to judge against
    lines = []
    overrides = recipe_overrides(config)
    if overrides:
        lines += ["## Overrides", "", f"This run changed the recipe `{recipe.name}`:", "",
                  "| setting | this run | recipe |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(v)} | {_fmt(b)} |" for k, (v, b) in overrides.items()]
        lines.append("")
    metric = recipe.reported_metric
    ours = summary.get(metric, accuracy if metric == "test_accuracy" else None)
    if ours is None:
        return lines
    ok, bar, how = judge(recipe, float(ours))
    what = "test" if metric == "test_accuracy" else "validation"
    against = f"target ≥ {_pct(bar)}" if how == "target" else how
    lines += ["## Verdict", "", f"**{'ok' if ok else 'MISSED'}**: {_pct(ours)} {what} accuracy; {against}."]
    if overrides and bar is not None:
        lines += ["", "The target is the recipe's as written; with the overrides above it is a reference only."]
    if recipe.dropout or recipe.shift or recipe.rotate or recipe.scale or recipe.translate or recipe.flip:
        lines += ["", "Train accuracy is measured on the training batches as trained (with dropout / augmentation), "
                      "so it can sit below test accuracy."]
    return lines + [""]
