"""Plots and run reports (digitlab.plots, `digitlab plot ...`).

    .venv/bin/python -m pytest tests/test_plots.py -q

The figure tests use real models trained on the bundled mnist-sample (they need a trained model, not full
MNIST): the session's `sample_model` (an MLP) and a one-epoch softmax regression (a linear model, for the weight
templates). Each PNG is decoded with Pillow and checked for its
documented pixel size and for real content (many colours, not one flat fill).
"""

from __future__ import annotations

import collections
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digitlab import plots
from digitlab.cli import main
from digitlab.errors import DataError, DigitlabError

HEADER = "epoch,train_loss,train_accuracy,val_loss,val_accuracy,seconds\n"


def assert_png(path, kind: str) -> np.ndarray:
    """`path` is a PNG of the documented size for `kind` with real content; returns its RGB pixels."""
    from PIL import Image

    path = Path(path)
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == plots.FIGURE_PIXELS[kind]
        pixels = np.asarray(img.convert("RGB"))
    packed = pixels.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)  # (H, W, 3) -> (H, W)
    colours = np.unique(packed)
    assert len(colours) > 20, f"{path}: only {len(colours)} colours"
    assert (packed != packed[0, 0]).mean() > 0.05, f"{path}: nearly one flat colour"
    return pixels


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------ numbers
@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=0, max_size=200))
def test_confusion_matrix_counts_every_pair(pairs):
    labels = np.array([t for t, _ in pairs], dtype=np.int64)
    predicted = np.array([p for _, p in pairs], dtype=np.int64)
    counts = plots.confusion_matrix(labels, predicted, 10)
    expected = collections.Counter(pairs)
    assert counts.shape == (10, 10) and counts.dtype == np.int64
    for t in range(10):
        for p in range(10):
            assert counts[t, p] == expected[(t, p)]


def test_confusion_matrix_refuses_labels_outside_the_classes():
    with pytest.raises(DataError, match=r"label 12 is outside the model's 10 classes"):
        plots.confusion_matrix(np.array([1, 12]), np.array([1, 2]), 10)


def test_unwritable_output_is_a_clear_error(tmp_path):
    (tmp_path / "history.csv").write_text(HEADER + "1,0.9,0.7,,,1.5\n")
    with pytest.raises(DigitlabError, match="is a folder"):
        plots.plot_curves(tmp_path, tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DigitlabError, match="curves.png: cannot write here: .*file is a file, not a folder"):
        plots.plot_curves(tmp_path, tmp_path / "file" / "curves.png")


def test_row_normalize_and_per_class_accuracy():
    counts = np.array([[8, 2, 0], [0, 0, 0], [1, 1, 2]])
    fractions = plots.row_normalize(counts)
    np.testing.assert_allclose(fractions, [[0.8, 0.2, 0], [0, 0, 0], [0.25, 0.25, 0.5]])
    acc = plots.per_class_accuracy(counts)
    assert acc[0] == pytest.approx(0.8) and np.isnan(acc[1]) and acc[2] == pytest.approx(0.5)


def test_confident_mistakes_are_mistakes_sorted_by_confidence():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(500, 10)) * 3
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 10, size=500)
    labels[:50] = proba[:50].argmax(axis=1)  # some right answers
    index = plots.confident_mistakes(proba, labels, 36)
    predicted = proba.argmax(axis=1)
    assert len(index) == 36
    assert (predicted[index] != labels[index]).all()
    confidence = proba[index, predicted[index]]
    assert (np.diff(confidence) <= 0).all()
    # nothing more confident was left out
    wrong = np.flatnonzero(predicted != labels)
    assert confidence[-1] >= np.sort(proba[wrong, predicted[wrong]])[-37]
    assert len(plots.confident_mistakes(proba, proba.argmax(axis=1), 10)) == 0


# ------------------------------------------------------------------------------------------ history
def test_curves_from_a_history_with_and_without_validation(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.csv").write_text(HEADER + "1,0.9,0.7,,,1.5\n2,0.5,0.85,,,1.4\n3,0.3,0.9,,,1.4\n")
    assert plots.read_history(run)["val_loss"].tolist() == pytest.approx([np.nan] * 3, nan_ok=True)
    assert_png(plots.plot_curves(run, run / "curves.png").path, "curves")
    (run / "history.csv").write_text(HEADER + "1,0.9,0.7,1.0,0.68,1.5\n2,0.5,0.85,0.6,0.8,1.4\n")
    hist = plots.read_history(run / "history.csv")
    assert hist["val_accuracy"].tolist() == [0.68, 0.8]
    assert [name for name, _ in plots.curve_series(hist, "loss")] == ["train", "validation"]
    assert_png(plots.plot_curves(run, tmp_path / "c2.png").path, "curves")


def test_curves_show_every_recorded_split():
    # train.py's history has extra columns (step, lr, test_*); empty ones are left out
    hist = {"epoch": np.array([1.0, 2.0]), "train_loss": np.array([0.5, 0.3]), "val_loss": np.full(2, np.nan),
            "test_loss": np.array([0.4, 0.35]), "train_accuracy": np.array([0.8, 0.9])}
    assert [name for name, _ in plots.curve_series(hist, "loss")] == ["train", "test"]
    assert [name for name, _ in plots.curve_series(hist, "accuracy")] == ["train"]
    np.testing.assert_array_equal(plots.curve_series(hist, "loss")[1][1], [0.4, 0.35])


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no history.csv"),
        ("", "empty history"),
        (HEADER, "no epochs"),
        ("epoch,loss\n1,0.5\n", "missing column(s) train_loss, train_accuracy"),
        (HEADER + "1,0.5,abc,,,1\n", "line 2, column train_accuracy: 'abc' is not a number"),
        (HEADER + "1,0.5\n", "line 2 has 2 fields"),
    ],
)
def test_bad_history_is_one_clear_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / "history.csv").write_text(content)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        plots.read_history(tmp_path)
    assert str(tmp_path) in str(err.value)
    assert not (tmp_path / "curves.png").exists()


def test_cli_curves_errors_name_the_folder(tmp_path, capsys):
    code, out, err = run_cli(capsys, "plot", "curves", str(tmp_path / "nope"))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and str(tmp_path / "nope") in err and "not found" in err


# ------------------------------------------------------------------------------------------ real models
@pytest.fixture(scope="module")
def softmax_run(tmp_path_factory):
    """A linear model (softmax regression, one epoch on mnist-sample) and its run folder."""
    from digitlab.train import train_recipe

    out = tmp_path_factory.mktemp("run-softmax")
    return train_recipe("seed-001-softmax", overrides={"epochs": 1, "dataset": "mnist-sample"}, out_dir=out,
                        quiet=True)


@pytest.fixture(scope="module")
def mnist_test():
    import digitlab.data

    return digitlab.data.load("mnist-sample", split="test")


def test_cli_curves_json(sample_model, tmp_path, capsys):
    out = tmp_path / "curves.png"
    code, stdout, _ = run_cli(capsys, "plot", "curves", str(sample_model.model_path.parent), "--out", str(out),
                              "--json")
    assert code == 0
    result = json.loads(stdout)
    assert result == {"path": str(out), "width": 1000, "height": 400}
    assert_png(out, "curves")


def test_cli_weights_linear_templates_and_mlp_units(softmax_run, sample_model, tmp_path, capsys):
    code, stdout, _ = run_cli(capsys, "plot", "weights", str(softmax_run.model_path), "--out",
                              str(tmp_path / "w.png"), "--json")
    assert code == 0 and json.loads(stdout)["width"] == plots.FIGURE_PIXELS["weights"][0]
    pixels = assert_png(tmp_path / "w.png", "weights")
    # diverging map centred on 0: a trained softmax has strong positive (red) and negative (blue) weights
    templates = pixels[:, : int(0.88 * pixels.shape[1])]  # leave the colour bar out
    r, b = templates[..., 0].astype(int), templates[..., 2].astype(int)
    assert ((r - b) > 80).sum() > 500 and ((b - r) > 80).sum() > 500

    code, stdout, _ = run_cli(capsys, "plot", "weights", str(sample_model.model_path), "--out",
                              str(tmp_path / "u.png"), "--json")
    assert code == 0 and (json.loads(stdout)["width"], json.loads(stdout)["height"]) == plots.FIGURE_PIXELS["units"]
    assert_png(tmp_path / "u.png", "units")


def test_cli_confusion_counts_match_a_direct_computation(sample_model, mnist_test, tmp_path, capsys):
    out = tmp_path / "conf.png"
    code, stdout, _ = run_cli(capsys, "plot", "confusion", str(sample_model.model_path), "--out", str(out),
                              "--json")
    assert code == 0 and json.loads(stdout)["path"] == str(out)
    assert_png(out, "confusion")

    images, labels = mnist_test
    predicted = sample_model.model.predict(images)
    counts = plots.confusion_matrix(labels, predicted, 10)
    direct = np.zeros((10, 10), dtype=np.int64)
    for (t, p), k in collections.Counter(zip(labels.tolist(), predicted.tolist())).items():
        direct[t, p] = k
    np.testing.assert_array_equal(counts, direct)
    np.testing.assert_array_equal(counts.sum(axis=1), np.bincount(labels, minlength=10))
    assert np.trace(counts) / len(labels) == pytest.approx(float((predicted == labels).mean()))


def test_confusion_errors_are_readable_next_to_a_near_perfect_diagonal(tmp_path):
    """Row-normalised panel of a 99 %-right matrix: a 0.1 % and a 2 % confusion are clearly coloured (on the errors'
    own scale, the larger darker), a confusion that never happened stays background, the diagonal has its own
    colour. Pixels are read from the saved PNG at cell positions taken from the same figure's axes."""
    from matplotlib.colors import to_rgb
    from PIL import Image

    counts = np.diag(np.full(10, 1000))
    counts[3, 3], counts[3, 5] = 980, 20  # 2 % of the 3s read as 5
    counts[4, 4], counts[4, 9] = 999, 1  # 0.1 % of the 4s read as 9
    names = [str(d) for d in range(10)]
    plot = plots.plot_confusion_matrix(counts, names, tmp_path / "confusion.png")
    with Image.open(plot.path) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)  # (H, W, 3)
    fig = plots.confusion_figure(counts, names)  # the same layout, to find the cells
    fig.draw_without_rendering()
    panel = fig.axes[1]

    def cell(i, j):  # a pixel of cell (true i, predicted j) below its centred text
        x, y = panel.transData.transform((j, i + 0.35))
        return rgb[int(round(plot.height - y)), int(round(x))]

    white = np.array([255, 255, 255])
    small, large, never = cell(4, 9), cell(3, 5), cell(0, 7)
    assert np.array_equal(never, white), never
    assert np.abs(small - white).sum() > 100 and small[0] > small[2], f"a 0.1 % confusion is nearly white: {small}"
    assert large.sum() < small.sum() - 100, (large, small)  # the larger confusion is clearly darker
    diagonal = np.round(255 * np.array(to_rgb(plots.DIAGONAL_COLOUR)))
    for d in (0, 3, 4):
        assert np.abs(cell(d, d) - diagonal).max() <= 2, cell(d, d)
    # a perfect model (no errors at all) and a class without samples still draw
    perfect = np.diag(np.arange(10) * 7)
    assert_png(plots.plot_confusion_matrix(perfect, names, tmp_path / "perfect.png").path, "confusion")


def test_cli_mistakes_are_real_mistakes(sample_model, mnist_test, tmp_path, capsys):
    out = tmp_path / "m.png"
    code, stdout, _ = run_cli(capsys, "plot", "mistakes", str(sample_model.model_path), "--n", "16", "--out",
                              str(out), "--json")
    assert code == 0
    assert_png(out, "mistakes")
    images, labels = mnist_test
    proba = sample_model.model.predict_proba(images)
    index = plots.confident_mistakes(proba, labels, 16)
    predicted = proba.argmax(axis=1)
    assert len(index) == 16 and (predicted[index] != labels[index]).all()
    assert (np.diff(proba[index, predicted[index]]) <= 0).all()


def test_cli_samples(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run_cli(capsys, "plot", "samples", "mnist-sample", "--per-class", "8", "--json")
    assert code == 0
    result = json.loads(stdout)
    assert Path(result["path"]).name == "samples-mnist-sample.png"
    assert_png(tmp_path / "samples-mnist-sample.png", "samples")


def test_cli_model_that_is_not_a_model(tmp_path, capsys):
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"this is not a model at all" * 10)
    for kind in ("weights", "confusion", "mistakes"):
        code, out, err = run_cli(capsys, "plot", kind, str(bogus))
        assert code == 1 and out == ""
        assert err.startswith("digitlab: error:") and err.count("\n") == 1 and str(bogus) in err
    assert not list(tmp_path.glob("*.png"))


def test_run_report_links_existing_files_and_tables_match(softmax_run, mnist_test):
    run_dir = softmax_run.model_path.parent
    images, labels = mnist_test
    report = plots.write_run_report(run_dir, softmax_run.model, images, labels)
    assert report == run_dir / "report.md"
    text = report.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == sorted(plots.FIGURE_FILES)
    for link in links:
        assert not Path(link).is_absolute()
        assert_png(run_dir / link, "weights" if link == "weights.png" else link.removesuffix(".png"))
    # per-class accuracy rows equal a direct computation
    predicted = softmax_run.model.predict(images)
    for c in range(10):
        row = re.search(rf"^\| {c} \| ([0-9.]+) % \| (\d+) \|", text, re.M)
        assert row, f"no per-class row for {c}"
        mask = labels == c
        assert float(row.group(1)) == pytest.approx(100 * float((predicted[mask] == c).mean()), abs=5e-3)
        assert int(row.group(2)) == int(mask.sum())
    accuracy = float((predicted == labels).mean())
    assert f"| test accuracy (computed for this report) | {100 * accuracy:.2f} % |" in text
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"| test_accuracy | {100 * summary['test_accuracy']:.2f} % | summary.json + model file |" in text
    assert "seed-001-softmax" in text  # the recipe is part of the report
    # the fixture's overrides (epochs 1, mnist-sample) are listed against the recipe's own values
    assert "| epochs | 1 | 10 |" in text and "| dataset | mnist-sample | mnist |" in text
    overrides = re.search(r"^## Overrides\n\n.*?\n\n(.*?)\n\n", text, re.M | re.S).group(1)
    assert len(overrides.splitlines()) == 2 + 2  # header, rule, exactly the two overridden fields


def test_overrides_leave_out_what_the_recipes_data_set_table_set():
    import dataclasses

    from digitlab.recipes import load_recipe

    def config(**overrides):
        return json.loads(json.dumps(dataclasses.asdict(load_recipe("cnn-best", overrides))))

    assert plots.recipe_overrides(config()) == {}
    assert plots.recipe_overrides(config(dataset="fashion-mnist")) == {"dataset": ("fashion-mnist", "mnist")}
    assert plots.recipe_overrides(config(dataset="fashion-mnist", rotate=5, flip=False)) == {
        "dataset": ("fashion-mnist", "mnist"), "rotate": (5.0, 0.0), "flip": (False, True)}   # not the table's
    assert plots.recipe_overrides(config(flip=True)) == {"flip": (True, False)}


def test_run_report_html_is_one_self_contained_page(softmax_run, mnist_test):
    import base64
    from html.parser import HTMLParser

    run_dir = softmax_run.model_path.parent
    images, labels = mnist_test
    plots.write_run_report(run_dir, softmax_run.model, images, labels)
    page = (run_dir / "report.html").read_text()

    class Refs(HTMLParser):
        def __init__(self):
            super().__init__()
            self.srcs, self.tags = [], collections.Counter()

        def handle_starttag(self, tag, attrs):
            self.tags[tag] += 1
            self.srcs += [v for k, v in attrs if k in ("src", "href")]

    refs = Refs()
    refs.feed(page)
    assert refs.tags["table"] == 3  # overrides, metrics, per-class
    assert len(refs.srcs) == len(plots.FIGURE_FILES) and all(s.startswith("data:image/png;base64,") for s in refs.srcs)
    embedded = sorted(base64.b64decode(s.split(",", 1)[1]) for s in refs.srcs)
    assert embedded == sorted((run_dir / name).read_bytes() for name in plots.FIGURE_FILES)  # the very PNGs
    verdict = "ok" if softmax_run.test_accuracy >= 0.92 else "MISSED"  # seed-001-softmax's target
    assert f"<strong>{verdict}</strong>: {100 * softmax_run.test_accuracy:.2f} % test accuracy" in page
    assert "|---" not in page and "![" not in page  # all the markdown was rendered
    assert not list(run_dir.glob(".report.html.*.tmp"))  # written atomically: no temporary file left


def test_run_report_verdict_against_the_recipe_target(softmax_run, mnist_test, tmp_path):
    run_dir = tmp_path / "run"  # a copy: the shared run keeps its config
    shutil.copytree(softmax_run.model_path.parent, run_dir)
    images, labels = mnist_test
    ours = softmax_run.test_accuracy
    for target, verdict in ((ours - 0.01, "ok"), (ours + 0.01, "MISSED")):
        config = json.loads((run_dir / "config.json").read_text())
        config["target"] = round(target, 4)
        (run_dir / "config.json").write_text(json.dumps(config))
        text = plots.write_run_report(run_dir, softmax_run.model, images, labels).read_text()
        assert (f"**{verdict}**: {100 * ours:.2f} % test accuracy; target ≥ {100 * config['target']:.2f} %."
                in text), text


def test_run_report_refuses_mismatched_test_data(softmax_run, mnist_test, tmp_path):
    images, labels = mnist_test
    with pytest.raises(DataError, match="10 test images with 9 labels"):
        plots.write_run_report(tmp_path, softmax_run.model, images[:10], labels[:9])
    with pytest.raises(DataError, match="run folder not found"):
        plots.write_run_report(tmp_path / "nope", softmax_run.model, images[:10], labels[:10])
    assert not list(tmp_path.iterdir())


def test_run_report_written_by_training(sample_model):
    run_dir = sample_model.model_path.parent
    text = (run_dir / "report.md").read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (run_dir / link).is_file()
    assert_png(run_dir / "weights.png", "units")  # an MLP: first-layer units


def test_weights_of_a_model_without_pixel_weights_is_a_clear_error(tmp_path):
    class Conv:
        W = np.zeros((8, 1, 3, 3))

    class Model:
        class net:
            layers = [Conv()]

    with pytest.raises(DigitlabError, match=r"shape \(8, 1, 3, 3\)"):
        plots.plot_weights(Model(), tmp_path / "w.png")
    assert not (tmp_path / "w.png").exists()


def test_no_pyplot_and_no_matplotlib_until_a_plot_is_drawn(tmp_path):
    import subprocess
    import sys

    (tmp_path / "history.csv").write_text(HEADER + "1,0.9,0.7,,,1.5\n2,0.5,0.8,,,1.5\n")
    code = (
        "import argparse, sys\n"
        "import digitlab.commands.plot as cmd\n"
        "cmd.register(argparse.ArgumentParser().add_subparsers())\n"
        "assert 'matplotlib' not in sys.modules, 'registering the plot command imported matplotlib'\n"
        "from digitlab import plots\n"
        f"plots.plot_curves({str(tmp_path)!r}, {str(tmp_path / 'c.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "c.png").is_file()


def test_samples_rows_show_their_own_class_under_its_name(tmp_path, monkeypatch):
    """Each row's label (a y tick) sits at a row of the drawn montage that holds the first examples of that
    class, in order, and nothing else (the figure is read where plot_samples saves it)."""
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(4), 5))[:17]            # 4 classes, unevenly many
    images = rng.integers(1, 256, (len(labels), 28, 28)).astype(np.uint8)
    saved = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, kind, out: saved.setdefault("fig", fig) and save(fig, kind, out))
    plots.plot_samples(images, labels, tmp_path / "s.png", per_class=3, class_names=["a", "b", "c", "d"])
    ax = saved["fig"].axes[0]
    shown = np.asarray(ax.images[0].get_array())                          # the montage
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert names == ["a", "b", "c", "d"]
    for name, y in zip(names, ax.get_yticks()):
        top = int(round(y + 0.5 - 14))                                    # the label sits at the tile's middle
        row = shown[top : top + 28]
        want = images[labels == names.index(name)][:3].astype(np.float32)
        got = [row[:, k * 30 : k * 30 + 28] for k in range(len(want))]    # tiles 28 wide, 2 apart
        np.testing.assert_array_equal(np.stack(got), want, err_msg=name)


def test_confusion_fractions_are_shares_of_the_true_class_row():
    """The printed fractions divide by the row's (true class's) total, not the column's: with rows and columns
    of very different sizes the two differ (5 of 10 true 0s read as 1 is .500; of the 95 predicted 1s, .053)."""
    counts = np.array([[5, 5, 0], [0, 90, 0], [0, 0, 0]])           # class 2 never occurs
    fig = plots.confusion_figure(counts, ["0", "1", "2"])
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in fig.axes[1].texts}
    assert texts == {(0, 0): "0.500", (0, 1): ".500", (1, 1): "1.000"}
    assert fig.axes[0].texts and {t.get_text() for t in fig.axes[0].texts} == {"5", "90"}
