"""`digitlab data info|fetch|verify|show` run in-process through digitlab.cli.main."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from data_helpers import STEMS, files_under, gz, write_files

from digitlab.cli import main
from digitlab.data.sources import REGISTRY


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_info_json_on_real_mnist(capsys, mnist_dir):
    rc, out, err = run(capsys, "data", "info", "mnist", "--data-dir", str(mnist_dir), "--json")
    assert rc == 0 and err == ""
    info = json.loads(out)
    assert info["name"] == "mnist" and info["found_by"] == "data_dir" and info["source"] == str(mnist_dir)
    assert info["splits"]["train"]["count"] == 60000 and info["splits"]["test"]["count"] == 10000
    assert sum(info["splits"]["test"]["per_class"]) == 10000 and info["splits"]["train"]["per_class"][1] == 6742
    assert info["checksums"]["sha256"] == dict(REGISTRY["mnist"].checksums)


def test_info_offline_falls_back_to_sample_with_notice(capsys):
    rc, out, err = run(capsys, "data", "info")
    assert rc == 0
    assert out.startswith("mnist-sample: found in ") and "(bundled)" in out
    assert "train: 10000 images" in out and "test: 2000 images" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "using the bundled mnist-sample" in lines[0]


def test_fetch_imports_data_dir_into_cache_then_info_finds_it(capsys, mnist_dir):
    rc, out, _ = run(capsys, "data", "fetch", "mnist", "--data-dir", str(mnist_dir), "--json")
    assert rc == 0
    result = json.loads(out)
    assert result["found_by"] == "cache" and result["source"].endswith("digitlab/mnist")
    rc, out, err = run(capsys, "data", "info", "mnist", "--json")
    assert rc == 0 and err == ""
    assert json.loads(out)["found_by"] == "cache"
    rc, out, _ = run(capsys, "data", "verify", "mnist")
    assert rc == 0 and out.strip().endswith("all checksums match")


def test_verify_exit_code_and_report(capsys, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(REGISTRY["mnist-sample"].bundled, folder)
    rc, out, _ = run(capsys, "data", "verify", "--data-dir", str(folder), "--json")
    assert rc == 0 and json.loads(out)["name"] == "mnist-sample"
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gz(np.zeros(2000, np.uint8)))  # valid IDX, wrong labels
    rc, out, _ = run(capsys, "data", "verify", "mnist-sample", "--data-dir", str(folder))
    assert rc == 1
    assert "t10k-labels-idx1-ubyte.gz: FAILED: checksum mismatch" in out
    assert "train-images-idx3-ubyte.gz: ok" in out and out.strip().endswith("checksum verification FAILED")
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    rc, out, _ = run(capsys, "data", "verify", "--data-dir", str(folder), "--json")
    report = json.loads(out)
    assert rc == 1 and report["name"] is None
    assert [f["problem"] for f in report["files"]][2].endswith("empty file (0 bytes of IDX data)")


def test_show_grid_and_indices(capsys, tmp_path):
    from PIL import Image

    out_png = tmp_path / "grid.png"
    rc, out, _ = run(capsys, "data", "show", "mnist-sample", "--grid", "3", "--scale", "2", "--out", str(out_png))
    assert rc == 0 and out_png.is_file()
    with Image.open(out_png) as img:
        assert img.size[0] == 3 * (28 * 2 + 2) + 2 and img.size[1] > 3 * (28 * 2 + 2 + 12) + 2  # + label strips
        pixels = np.asarray(img)
    assert pixels.max() == 255  # digits drawn
    rc, out, _ = run(capsys, "data", "show", "mnist-sample", "--split", "train", "--index", "0", "5",
                     "--out", str(out_png), "--json")  # fmt: skip
    result = json.loads(out)
    ds_labels = __import__("digitlab.data", fromlist=["load"]).load("mnist-sample", "train")[1]
    assert result["indices"] == [0, 5] and result["labels"] == [int(ds_labels[0]), int(ds_labels[5])]
    assert [p.name for p in files_under(tmp_path)] == ["grid.png"]  # atomic write: no temp files


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_show_labels_are_legible_under_their_tiles(tmp_path, scale):
    """Each label: white text on a dark grey strip under its own tile (never on it), at least 15 % of the tile's
    height tall (8 px at least). Tiles are drawn black, then white: the pixels that change are the tiles', and on
    black tiles every bright pixel is label text."""
    from PIL import Image

    from digitlab.commands.data import LABEL_STRIP, write_grid_png

    tile = 28 * scale
    sheets = {}
    for ink in (0, 255):
        out = tmp_path / f"grid-{ink}.png"
        write_grid_png(out, np.full((10, 28, 28), ink, np.uint8), np.arange(10), [str(d) for d in range(10)],
                       cols=10, scale=scale)
        with Image.open(out) as img:
            sheets[ink] = np.asarray(img).astype(int)  # (H, W)
    tiles = sheets[0] != sheets[255]  # (H, W)
    text = sheets[0] >= 128
    tile_rows, text_rows = np.flatnonzero(tiles.any(axis=1)), np.flatnonzero(text.any(axis=1))
    assert len(tile_rows) == tile and text_rows.min() > tile_rows.max(), "a label is drawn over its tile"
    assert text_rows.max() - text_rows.min() + 1 >= max(8, 0.15 * tile), "labels too small for their tiles"
    tile_cols = tiles.any(axis=0)
    assert not np.any(text.any(axis=0) & ~tile_cols), "a label spills past its tile's width"
    for k in range(10):  # one label under each tile, the strip behind it dark
        cols = np.flatnonzero(tile_cols)[k * tile : (k + 1) * tile]
        strip = sheets[0][tile_rows.max() + 1 : text_rows.max() + 1, cols]
        assert (strip >= 128).any() and np.median(strip) == LABEL_STRIP and LABEL_STRIP <= 64


def test_user_errors_are_one_line(capsys, tmp_path):
    rc, _, err = run(capsys, "data", "show", "mnist-sample", "--index", "5000", "--out", str(tmp_path / "x.png"))
    assert rc == 1 and err == "digitlab: error: --index 5000 out of range for test split of 2000 images\n"
    assert not (tmp_path / "x.png").exists()
    rc, _, err = run(capsys, "data", "info", "nmist")
    assert rc == 1 and err.startswith("digitlab: error: unknown data set 'nmist'")
    bad = tmp_path / "bad"
    write_files(bad, {s: np.zeros((3, 28, 28) if "images" in s else 3, np.uint8) for s in STEMS.values()})
    (bad / "train-images-idx3-ubyte.gz").write_bytes(b"<html><body>Service Unavailable</body></html>")
    rc, _, err = run(capsys, "data", "info", "mnist", "--data-dir", str(bad))
    assert rc == 1
    assert err == (f"digitlab: error: {bad / 'train-images-idx3-ubyte.gz'}: is an HTML page, not IDX data "
                   "(a web server's error page saved under this name?)\n")  # fmt: skip


def test_console_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "digitlab", "data", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for action in ("info", "fetch", "verify", "show"):
        assert action in proc.stdout


@pytest.mark.parametrize("action", ["info", "fetch", "verify", "show"])
def test_every_action_has_json_flag(action, capsys):
    with pytest.raises(SystemExit):
        main(["data", action, "--help"])
    assert "--json" in capsys.readouterr().out


def test_show_labels_name_each_tiles_own_class(tmp_path):
    """The label under tile k is the class name of labels[k]: the strips of a grid with the labels reversed are
    the strips of the straight grid, reversed (digits render differently, so a wrong name shows)."""
    from PIL import Image

    from digitlab.commands.data import write_grid_png

    names = ["zero", "one", "two", "three", "four"]
    strips = {}
    for order in ("straight", "reversed"):
        labels = np.arange(5) if order == "straight" else np.arange(5)[::-1]
        out = tmp_path / f"{order}.png"
        write_grid_png(out, np.zeros((5, 28, 28), np.uint8), labels, names, cols=5, scale=2, pad=2)
        with Image.open(out) as img:
            sheet = np.asarray(img).astype(int)
        cell_w = 28 * 2 + 2
        strips[order] = [sheet[2 + 56:, 2 + k * cell_w : 2 + k * cell_w + 56] for k in range(5)]
    assert len({s.tobytes() for s in strips["straight"]}) == 5          # five different labels
    for k in range(5):
        np.testing.assert_array_equal(strips["reversed"][k], strips["straight"][4 - k])


@pytest.mark.parametrize("scale", [2, 4])
def test_show_long_class_names_are_narrowed_to_their_tiles(tmp_path, scale):
    """Fashion-MNIST's longest names are set in a smaller font so that each stays within its own tile's width."""
    from PIL import Image

    from digitlab.commands.data import write_grid_png

    names = ["Ankle boot", "Sneaker", "Pullover"]
    out = tmp_path / "grid.png"
    write_grid_png(out, np.zeros((3, 28, 28), np.uint8), np.arange(3), names, cols=3, scale=scale, pad=2)
    with Image.open(out) as img:
        sheet = np.asarray(img).astype(int)
    text_cols = np.flatnonzero((sheet >= 128).any(axis=0))
    tile = 28 * scale
    for k in range(3):
        left = 2 + k * (tile + 2)
        inside = (text_cols >= left) & (text_cols < left + tile)
        assert inside.any(), f"no label under tile {k}"
    tiles = np.zeros(sheet.shape[1], bool)
    for k in range(3):
        tiles[2 + k * (tile + 2) : 2 + k * (tile + 2) + tile] = True
    assert tiles[text_cols].all(), "a long label spills past its tile's width"
