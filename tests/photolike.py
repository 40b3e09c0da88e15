"""Phone-photo-like and canvas-like images made from MNIST test digits, the way people make their own.

    import numpy as np
    from photolike import photo_like, canvas_like, make_set
    rng = np.random.default_rng(0)
    jpeg = photo_like(digit, rng)          # digit: uint8 [28, 28] MNIST image -> JPEG bytes
    png = canvas_like(digit, rng)          # -> PNG bytes, 280 x 280
    for name, data, label in make_set(images, labels, n_photo=200, n_canvas=100, seed=0): ...

    python tests/photolike.py OUT_DIR [N]  # write N examples of each kind into OUT_DIR to look at them

A photo: the digit in a 300-1200 px picture (every 30th at phone size, 4000 px), thinned or thickened like a
pen or marker, dark ink on tinted paper, lit unevenly (a gradient in a random direction plus vignetting),
placed off-centre, rotated a few degrees, with the ink slightly out of focus, noisy, with a few specks of dirt, sometimes
with the dark desk showing along one side (at most 30 % of the picture), and saved
as JPEG at quality 40-90. A canvas: thick, anti-aliased brush strokes of a scaled-up digit at 280 x 280,
white on black (most), black on white, or white on a transparent background (RGBA PNG).

Every random draw comes from the `numpy.random.Generator` passed in.
"""

from __future__ import annotations

import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

SHAPE_SIZE = 112  # the digit is reshaped (thinned/thickened) at 4x MNIST resolution


@dataclass(frozen=True)
class PhotoStyle:
    min_side: int = 300
    max_side: int = 1200
    phone_side: int = 4000  # every `phone_every`-th photo is this big
    phone_every: int = 30
    digit_fraction: tuple[float, float] = (0.25, 0.6)  # digit height / shorter image side
    max_rotation: float = 6.0  # degrees
    jpeg_quality: tuple[int, int] = (40, 90)
    noise_sigma: tuple[float, float] = (2.0, 8.0)
    max_specks: int = 4
    desk_chance: float = 0.25  # a dark strip of desk along one side


@dataclass(frozen=True)
class CanvasStyle:
    side: int = 280
    digit_fraction: tuple[float, float] = (0.45, 0.85)
    max_extra_brush: int = 3  # extra 3x3 dilations at 112 px (each widens strokes by ~2/112 of the digit)


def _shape(digit: np.ndarray, passes: int) -> Image.Image:
    """The digit's ink at 112 x 112 (mode L): crisp anti-aliased edges, eroded (passes < 0) or dilated."""
    a = Image.fromarray(np.asarray(digit, dtype=np.float32) / 255.0, mode="F")
    big = np.asarray(a.resize((SHAPE_SIZE, SHAPE_SIZE), Image.Resampling.BICUBIC), dtype=np.float32)
    big = np.clip((big - 0.3) / 0.4, 0.0, 1.0)  # (112, 112) soft MNIST edges -> pen-like edges
    img = Image.fromarray(np.rint(big * 255).astype(np.uint8), mode="L")
    filt = ImageFilter.MinFilter(3) if passes < 0 else ImageFilter.MaxFilter(3)
    for _ in range(abs(passes)):
        img = img.filter(filt)
    return img


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo_like(digit: np.ndarray, rng: np.random.Generator, style: PhotoStyle = PhotoStyle(), index: int = 0) -> bytes:
    """JPEG bytes of a phone-photo-like picture of `digit` (uint8 [28, 28], MNIST: bright ink on 0)."""
    if style.phone_every and index % style.phone_every == style.phone_every - 1:
        long_side = style.phone_side
    else:
        long_side = int(math.exp(rng.uniform(math.log(style.min_side), math.log(style.max_side))))
    short_side = int(long_side * rng.uniform(0.75, 1.0))
    w, h = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)

    # ink: thin pen (eroded), MNIST-like, or marker (dilated), scaled, rotated, placed off-centre
    passes = int(rng.choice([-1, 0, 0, 1, 2]))
    d = max(24, int(min(w, h) * rng.uniform(*style.digit_fraction)))
    ink = _shape(digit, passes).resize((d, d), Image.Resampling.BICUBIC)
    ink = ink.rotate(rng.uniform(-style.max_rotation, style.max_rotation), Image.Resampling.BICUBIC, expand=True)
    blur = rng.uniform(0.0, min(w, h) / 600)  # out of focus (the paper is flat, so only the ink shows it)
    if blur > 0.3:
        ink = ink.filter(ImageFilter.GaussianBlur(blur))
    mask = Image.new("L", (w, h), 0)
    px, py = int(rng.integers(0, w - ink.width + 1)), int(rng.integers(0, h - ink.height + 1))
    mask.paste(ink, (px, py))

    # paper: tint, a lighting gradient in a random direction and vignetting, made small and scaled up
    gh, gw = 24, 24
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)  # (24, 24) each
    yy, xx = yy / (gh - 1) - 0.5, xx / (gw - 1) - 0.5
    theta = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(theta) + yy * math.sin(theta)) + 0.5  # (24, 24) in ~[-0.2, 1.2]
    light = 1.0 - rng.uniform(0.1, 0.45) * ramp - rng.uniform(0.0, 0.35) * (xx**2 + yy**2)  # (24, 24)
    tint = np.array([1.0, rng.uniform(0.88, 1.0), rng.uniform(0.7, 1.0)], dtype=np.float32)
    if rng.random() < 0.3:
        tint = tint[::-1].copy()  # a cool (bluish) cast instead of a warm one
    paper_level = rng.uniform(190, 250)
    paper = np.clip(paper_level * light[:, :, None] * tint, 0, 255)  # (24, 24, 1) * (3,) -> (24, 24, 3)
    paper_img = Image.fromarray(paper.astype(np.uint8), mode="RGB").resize((w, h), Image.Resampling.BILINEAR)
    ink_rgb = rng.uniform([5, 5, 10], [60, 60, 110]).astype(np.float32)  # (3,) ink lit like the paper
    lit_ink = Image.fromarray(np.clip(ink_rgb * light[:, :, None], 0, 255).astype(np.uint8), mode="RGB")
    photo = Image.composite(lit_ink.resize((w, h), Image.Resampling.BILINEAR), paper_img, mask)

    # the desk beside the sheet, on the side with the most room (never over the digit)
    margins = {"left": px, "top": py, "right": w - px - ink.width, "bottom": h - py - ink.height}
    side = max(margins, key=margins.get)
    if rng.random() < style.desk_chance and margins[side] > 0.03 * min(w, h):
        k = int(min(margins[side] * rng.uniform(0.3, 0.8), 0.3 * (w if side in ("left", "right") else h)))
        box = {"left": (0, 0, k, h), "top": (0, 0, w, k), "right": (w - k, 0, w, h), "bottom": (0, h - k, w, h)}[side]
        desk = tuple(int(c) for c in rng.uniform([30, 20, 10], [110, 80, 60]))
        ImageDraw.Draw(photo).rectangle(box, fill=desk)

    # specks of dirt, sensor noise (a tile of Gaussian noise repeated over big pictures), JPEG
    draw = ImageDraw.Draw(photo)
    for _ in range(int(rng.integers(0, style.max_specks + 1))):
        r = max(1.0, min(w, h) * rng.uniform(0.001, 0.004))
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        grey = int(rng.uniform(60, 160))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(grey, grey, grey))
    th, tw = min(h, 509), min(w, 509)
    tile = np.clip(rng.normal(128.0, rng.uniform(*style.noise_sigma), (th, tw)), 0, 255).astype(np.uint8)
    noise = np.tile(tile, (-(-h // th), -(-w // tw)))[:h, :w]  # (h, w)
    grain = Image.fromarray(noise, mode="L")
    photo = ImageChops.add(photo, Image.merge("RGB", (grain, grain, grain)), scale=1.0, offset=-128)
    return _encode(photo, "JPEG", quality=int(rng.integers(*style.jpeg_quality, endpoint=True)))


def canvas_like(digit: np.ndarray, rng: np.random.Generator, style: CanvasStyle = CanvasStyle()) -> bytes:
    """PNG bytes of a drawing-canvas-like picture of `digit`: thick anti-aliased brush strokes at 280 x 280."""
    side = style.side
    d = int(side * rng.uniform(*style.digit_fraction))
    ink = _shape(digit, int(rng.integers(0, style.max_extra_brush + 1))).resize((d, d), Image.Resampling.BICUBIC)
    ink = ink.rotate(rng.uniform(-4, 4), Image.Resampling.BICUBIC, expand=True)
    mask = Image.new("L", (side, side), 0)
    limit_x, limit_y = max(1, side - ink.width + 1), max(1, side - ink.height + 1)
    mask.paste(ink, (int(rng.integers(0, limit_x)), int(rng.integers(0, limit_y))))
    kind = rng.random()
    if kind < 0.6:  # white on black
        return _encode(mask, "PNG")
    if kind < 0.8:  # black on white (a paint program's default)
        return _encode(Image.eval(mask, lambda v: 255 - v), "PNG")
    rgba = Image.merge("RGBA", (*Image.new("RGB", (side, side), (255, 255, 255)).split(), mask))
    return _encode(rgba, "PNG")  # white strokes on a transparent canvas


SCRIBBLES = ("dot", "dash", "dots", "zigzag", "hatch", "blob", "tiny")


def scribble(rng: np.random.Generator, kind: str, side: int = 280) -> bytes:
    """PNG bytes of a pad-like 280 x 280 picture (white on black, the page's pen) that is not a digit."""
    img = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(img)
    pen = int(rng.integers(14, 24))
    pt = lambda: (float(rng.uniform(20, side - 20)), float(rng.uniform(20, side - 20)))  # noqa: E731
    if kind == "dot":  # one dot anywhere, a corner included
        x, y = pt()
        r = rng.uniform(pen / 2, 3 * pen)
        d.ellipse((x - r, y - r, x + r, y + r), fill=255)
    elif kind == "dash":  # a horizontal or slightly tilted stroke
        x, y = pt()
        length, tilt = rng.uniform(60, 220), rng.uniform(-0.15, 0.15)
        d.line([(x - length / 2, y - tilt * length / 2), (x + length / 2, y + tilt * length / 2)], fill=255, width=pen)
    elif kind == "dots":  # a few dots scattered over the pad
        for _ in range(int(rng.integers(3, 9))):
            x, y = pt()
            d.ellipse((x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2), fill=255)
    elif kind == "zigzag":  # a scrawl over the whole pad
        d.line([pt() for _ in range(int(rng.integers(10, 25)))], fill=255, width=pen, joint="curve")
    elif kind == "hatch":  # parallel strokes
        x0, y0 = pt()
        for k in range(int(rng.integers(3, 7))):
            off = k * rng.uniform(25, 45)
            d.line([(20 + off, y0 - 60), (20 + off + rng.uniform(-20, 20), y0 + 60)], fill=255, width=pen)
    elif kind == "blob":  # a filled shape
        x, y = pt()
        rx, ry = rng.uniform(30, 100), rng.uniform(30, 100)
        d.ellipse((x - rx, y - ry, x + rx, y + ry), fill=255)
    elif kind == "tiny":  # a short tick
        x, y = pt()
        d.line([(x, y), (x + rng.uniform(-12, 12), y + rng.uniform(-12, 12))], fill=255, width=max(3, pen // 3))
    else:
        raise ValueError(f"unknown scribble kind {kind!r}")
    return _encode(img, "PNG")


def make_set(images: np.ndarray, labels: np.ndarray, n_photo: int, n_canvas: int, seed: int = 0):
    """[(name, encoded bytes, label, index into images)], photos first; digits drawn without replacement."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(images), size=n_photo + n_canvas, replace=False)
    out = []
    for k, i in enumerate(picks):
        if k < n_photo:
            out.append((f"photo-{k:03d}-{int(labels[i])}.jpg", photo_like(images[i], rng, index=k), int(labels[i]), int(i)))
        else:
            out.append((f"canvas-{k:03d}-{int(labels[i])}.png", canvas_like(images[i], rng), int(labels[i]), int(i)))
    return out


def train_sample_model(out_dir: Path) -> Path:
    """A small MLP trained on the bundled mnist-sample (a few seconds, no download, about 90 % right): for
    tests that need a real model but not a good one (refusals, limits, the page's wiring)."""
    from digitlab.train import train_recipe

    overrides = {"dataset": "mnist-sample", "epochs": 3, "hidden": [64], "shift": 0}
    return Path(train_recipe("mlp", overrides=overrides, out_dir=Path(out_dir) / "sample-run", quiet=True,
                             report=False).model_path)


# A small CNN for tests of what the page shows of a CNN: conv 6@5x5 -> maxpool -> ReLU -> 10 classes.
SMALL_CNN = {"dataset": "mnist-sample", "epochs": 1, "batch_size": 64, "optimizer": "adam", "lr": 0.003,
             "schedule": "constant", "shift": 0, "rotate": 0.0, "scale": 0.0, "translate": 0.0,
             "architecture": [{"type": "Conv2D", "filters": 6, "kernel": 5}, {"type": "MaxPool2D", "pool": 2},
                              {"type": "ReLU"}, {"type": "Flatten"}, {"type": "Linear", "out": 10}]}


def train_sample_cnn(out_dir: Path) -> Path:
    """A small CNN (SMALL_CNN) trained for one epoch on the bundled mnist-sample (a few seconds): its first layer is
    a Conv2D, so the page and the API show its feature maps."""
    from digitlab.train import train_recipe

    return Path(train_recipe("cnn", overrides=SMALL_CNN, out_dir=Path(out_dir) / "cnn-run", quiet=True,
                             report=False).model_path)


def _main(argv: list[str]) -> int:
    import gzip

    out = Path(argv[0])
    n = int(argv[1]) if len(argv) > 1 else 8
    mnist = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    images = np.frombuffer(gzip.open(mnist / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer(gzip.open(mnist / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    out.mkdir(parents=True, exist_ok=True)
    for name, data, _, _ in make_set(images, labels, n, n, seed=1):
        (out / name).write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
