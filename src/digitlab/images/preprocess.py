"""Photos and drawings -> 28x28 MNIST-style model input (`to_mnist`).

The preprocessing follows the MNIST page: the NIST digits were size-normalised to fit a 20x20 box keeping
their aspect ratio (anti-aliased, so grey levels appear) and centred in 28x28 by their centre of mass. A
photo of a digit on paper needs more than that first, so `to_mnist` does, step by step:

1. grey levels; a coarse copy (longer side 256 px) for the global decisions;
2. a smooth background (a quadratic surface fitted robustly, ink excluded) that takes out uneven paper and
   lighting, tint and vignetting; the side of the background the residual's heavy tail lies on is the ink
   polarity (dark ink on light paper is inverted, so ink is always bright); when the tails are nearly
   balanced (a desk in the picture's border, say) the polarity comes from local contrast instead;
3. ink = residual above the noise level (soft threshold, strokes keep their grey edges); connected ink
   components are labelled: specks (a small share of the ink) and frame-like regions along the border (a
   desk, the sheet's edge, a dark corner) are dropped; too little contrast, too small an extent, or only a
   desk -> "no digit found";
4. the ink's bounding box is cropped from the full-resolution image and resampled so its longer side is
   ~100 px; there the ink is measured relative to the lit paper, mapped through a steep ramp (crisp edges
   like the bilevel NIST scans), its stroke width is measured (2 x area / perimeter) and, when outside the
   range seen on MNIST, the strokes are grown or thinned with a grey-level disc dilation/erosion;
5. MNIST's own recipe: the ink's box is area-averaged into 20x20 keeping the aspect ratio (the grey levels
   are the anti-aliasing) and pasted into 28x28 at the whole-pixel offset that puts the intensity centre
   of mass nearest pixel (14, 14), where MNIST's digits have theirs; the strokes are stretched to 255.

Everything is NumPy on whole arrays plus Pillow resampling; no per-pixel Python loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from digitlab.images.decode import array_to_image, normalise_mode
from digitlab.images.morphology import SQUARE, ink_box, label_regions, morph, pool, shift_max, stroke_width

MNIST_CENTER = 14.0  # MNIST digits have their intensity centre of mass at pixel index (14, 14)


@dataclass(frozen=True)
class PreprocessConfig:
    """Knobs of `to_mnist`; the defaults were tuned on MNIST digits turned into photos and drawings."""

    coarse_size: int = 256  # longer side of the copy used for background, polarity and the ink's box
    work_size: int = 100  # longer side of the ink's box at the working resolution (stroke width, shape)
    box: int = 20  # the digit's longer side in the output (MNIST: 20)
    size: int = 28  # output side (MNIST: 28)
    center: float = MNIST_CENTER  # output centre of mass, pixel index
    min_contrast: float = 24.0  # grey levels: fainter ink than this is "no digit"
    min_snr: float = 6.0  # ink must stand this many noise sigmas above the background
    sure_polarity: float = 3.0  # |log(bright tail / dark tail)| below this: polarity from local contrast instead
    min_extent: float = 0.04  # ink box smaller than this fraction of the image's shorter side is "no digit"
    speck_share: float = 0.05  # ink components with less than this share of the ink are dropped
    edge_ramp: tuple[float, float] = (0.25, 0.65)  # ink (share of stroke contrast) mapped onto 0..1
    stroke_range: tuple[float, float] = (0.09, 0.17)  # stroke width / longer side kept as is (MNIST ~p10-p93)


DEFAULT_CONFIG = PreprocessConfig()


def to_mnist(img, config: PreprocessConfig = DEFAULT_CONFIG) -> tuple[np.ndarray, bool]:
    """MNIST-style uint8 [28, 28] (0 = background, 255 = ink) from a PIL image, and whether a digit was found.

    When no digit is found (blank, flat or near-empty input) the array is all zeros and `found` is False.
    """
    if isinstance(img, np.ndarray):
        img = array_to_image(img, "<array>")
    grey = normalise_mode(img, "<image>").convert("L")
    empty = np.zeros((config.size, config.size), dtype=np.uint8)

    coarse, scale = _resize_longer(grey, config.coarse_size)  # scale: full-res px per coarse px
    g = np.asarray(coarse, dtype=np.float32)  # (h, w)
    background = _Background.fit(g)
    residual = g - background.at_grid(g.shape)  # (h, w)
    if abs(_tail_balance(residual, max(background.sigma, 1.0))) < config.sure_polarity:
        local = _local_polarity(coarse)  # the fit is unsure (a desk in the border ring, say): ask the strokes
        if local != background.sign:
            background = _Background.fit(g, sign=local)
            residual = g - background.at_grid(g.shape)
    sigma = max(background.sigma, 1.0)
    sign = background.sign
    ink = np.maximum(sign * residual, 0.0)  # (h, w), bright ink on 0

    peak = float(np.percentile(ink, 99.95))
    if peak < max(config.min_contrast, config.min_snr * sigma):
        return empty, False
    mask = ink > max(3.0 * sigma, 0.25 * peak)  # (h, w) bool
    keep = _main_components(mask, ink, config.speck_share)
    if keep is None:
        return empty, False
    ys, xs = np.nonzero(mask & keep)
    if ys.size == 0:
        return empty, False
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    if max(y1 - y0, x1 - x0) < max(2, config.min_extent * min(g.shape)):
        return empty, False

    work = _work_crop(grey, background, sign, scale, (y0, y1, x0, x1), keep, config)
    if work is None:
        return empty, False
    work = _normalise_strokes(work, config)
    out = _place(work, config)
    if out.max() <= 0:
        return empty, False
    return out, True


def _resize_longer(img, longest: int):
    """Downscale (never upscale) so the longer side is at most `longest`; returns (image, full px per px)."""
    from PIL import Image

    w, h = img.size
    f = max(w, h) / longest
    if f <= 1.0:
        return img, 1.0
    size = (max(1, round(w / f)), max(1, round(h / f)))
    return img.resize(size, Image.Resampling.BOX, reducing_gap=3.0), (w / size[0] + h / size[1]) / 2


@dataclass(frozen=True)
class _Background:
    """A quadratic surface over the image in normalised coordinates u, v in [-1, 1], fitted without the ink."""

    coef: np.ndarray  # (6,)
    sigma: float  # robust noise level of the residual, grey levels
    sign: float  # +1: ink brighter than the background; -1: darker (found while fitting)

    @staticmethod
    def _design(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=-1)  # (..., 6)

    @classmethod
    def fit(cls, g: np.ndarray, rounds: int = 6, sign: float | None = None) -> "_Background":
        """Start from the image's outer ring (mostly paper), then refit on every pixel that is not ink.

        A tight crop of a fat digit would otherwise let the surface bulge into the digit itself. The ink's
        polarity comes from the first residual unless `sign` is given.
        """
        h, w = g.shape
        step = max(1, round(math.sqrt(h * w / 4096)))  # fit on at most ~4k points
        sub = g[::step, ::step]  # (h', w')
        yy, xx = np.arange(h)[::step], np.arange(w)[::step]
        v, u = np.meshgrid((yy + 0.5) / h * 2 - 1, (xx + 0.5) / w * 2 - 1, indexing="ij")
        a = cls._design(u.ravel(), v.ravel())  # (n, 6)
        y = sub.ravel().astype(np.float64)  # (n,)
        ring = (np.maximum(np.abs(u), np.abs(v)) > 0.8).ravel()
        use = ring if ring.sum() >= 12 else np.ones_like(ring)
        order = 6 if use.sum() > 24 else 1
        coef = np.zeros(6)
        sigma, given = 0.0, sign
        for i in range(rounds):
            coef[:] = 0.0
            au = a[use, :order]  # (m, order)
            coef[:order] = np.linalg.solve(au.T @ au + 1e-9 * np.eye(order), au.T @ y[use])  # (order,)
            r = y - a @ coef  # (n, 6) @ (6,) -> (n,)
            sigma = 1.4826 * float(np.median(np.abs(r[use] - np.median(r[use]))))
            cut = max(2.5 * sigma, 1.0)
            if i == 0:
                sign = given if given is not None else _polarity(r, max(sigma, 1.0))
            new = (sign * r <= cut) & (sign * r >= -2.0 * cut)  # ink side strict, other side lenient
            if new.sum() < 12 or (new == use).all():
                break
            use = new
        return cls(coef=coef, sigma=sigma, sign=sign)

    def at(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The surface at coordinates u (1, w) and v (h, 1) (or any broadcastable pair) -> (h, w) float32."""
        c = self.coef.astype(np.float32)
        u, v = u.astype(np.float32), v.astype(np.float32)
        return c[0] + u * (c[1] + c[3] * u + c[4] * v) + v * (c[2] + c[5] * v)  # (1, w) op (h, 1) -> (h, w)

    def at_grid(self, shape: tuple[int, int]) -> np.ndarray:
        h, w = shape
        return self.at(((np.arange(w) + 0.5) / w * 2 - 1)[None, :], ((np.arange(h) + 0.5) / h * 2 - 1)[:, None])


def _tail_balance(residual: np.ndarray, sigma: float) -> float:
    """log(bright tail / dark tail) of a residual beyond 3 sigma: > 0 when the ink is brighter than the paper."""
    bright = float(np.maximum(residual - 3.0 * sigma, 0.0).sum())
    dark = float(np.maximum(-residual - 3.0 * sigma, 0.0).sum())
    return math.log((bright + 1.0) / (dark + 1.0))


def _polarity(residual: np.ndarray, sigma: float) -> float:
    """+1 when the ink is brighter than the background, -1 when darker (the heavier tail of the residual)."""
    return 1.0 if _tail_balance(residual, sigma) >= 0 else -1.0


def _local_polarity(coarse) -> float:
    """Polarity from the image minus its own box blur (1/16 of the longer side): strokes stick out on their
    side, while a desk edge or a lighting step leaves equal tails on both; used when the surface fit is unsure."""
    from PIL import ImageFilter

    g = np.asarray(coarse, dtype=np.float32)  # (h, w)
    blurred = np.asarray(coarse.filter(ImageFilter.BoxBlur(max(2, round(max(g.shape) / 16)))), dtype=np.float32)
    d = g - blurred  # (h, w)
    return _polarity(d, 1.4826 * float(np.median(np.abs(d - np.median(d)))) + 1.0)


_GRID = 64  # connected components are found on a grid of at most this many cells a side


def _main_components(mask: np.ndarray, ink: np.ndarray, share: float) -> np.ndarray | None:
    """The region (bool, like `mask`) of the ink components that carry at least `share` of the ink.

    Components are labelled on a pooled (<= 64 cells a side), slightly dilated copy of the mask, so a
    broken stroke stays one component; labels spread along whole row and column runs until they settle
    (whole-array steps, no per-pixel loop).
    """
    h, w = mask.shape
    f = max(1, -(-max(h, w) // _GRID))
    grid = shift_max(pool(mask.astype(np.uint8), f), SQUARE).astype(bool)  # (gh, gw)
    labels = label_regions(grid)
    full = np.repeat(np.repeat(labels, f, axis=0), f, axis=1)[:h, :w]  # (h, w) label of each pixel's cell
    n = int(labels.max()) + 1
    weights = np.where(mask, ink, 0.0).ravel()
    mass = np.bincount(full.ravel(), weights=weights, minlength=n)  # (n,)
    mass[0] = 0.0
    if mass.sum() <= 0:
        return None
    frame, slab = _frame_like(mask, full, n)
    if (mass[~frame] > 0).any():  # a table edge or shadow along the border is not the digit
        mass[frame] = 0.0
    elif (mass[~slab] <= 0).all():  # only thick desk / sheet edges in the picture: a blank sheet, no digit
        return None
    kept = np.flatnonzero(mass >= share * mass.sum())
    return np.isin(full, kept)


def _frame_like(mask: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(frame, slab), (n,) bool each: components that run along the image border (a desk, the paper's
    edge, a dark corner), and those among them that hug it over a quarter of the shorter side, reach two
    sides of the picture and are thicker than a pen stroke (8 % of that side): a desk, never a digit.

    A digit may touch the border with a stroke end (contact about one stroke width); a frame-like region
    touches it over at least three of its own widths and over a tenth of the image's shorter side, or over
    a quarter of that side whatever its width, or reaches from one side of the picture to the opposite one
    (the edge of a desk or of the sheet).
    """
    h, w = mask.shape
    lab = np.where(mask, labels, 0)  # (h, w)
    area = np.bincount(lab.ravel(), minlength=n).astype(np.float64)  # (n,)
    inner = -shift_max(-mask.astype(np.int8), [(0, 1), (0, -1), (1, 0), (-1, 0), (0, 0)])  # 4-neighbour erosion
    edge = np.bincount(lab[mask & (inner == 0)], minlength=n).astype(np.float64)  # boundary pixels
    width = 2.0 * area / np.maximum(edge, 1.0)  # (n,) mean thickness
    ring = np.concatenate([lab[0], lab[-1], lab[1:-1, 0], lab[1:-1, -1]])
    contact = np.bincount(ring, minlength=n).astype(np.float64)  # (n,) border pixels
    side = min(h, w)
    on = [np.bincount(edge_pixels, minlength=n) > 0 for edge_pixels in (lab[0], lab[-1], lab[:, 0], lab[:, -1])]
    spans = (on[0] & on[1]) | (on[2] & on[3])  # from one side of the picture to the opposite one
    wall = contact >= 0.25 * side
    frame = ((contact >= 3.0 * width) & (contact >= 0.1 * side)) | wall | spans
    corner = (on[0] | on[1]) & (on[2] | on[3])  # touches two adjacent sides
    slab = wall & (spans | corner) & (width >= 0.08 * side)
    frame[0] = slab[0] = False
    return frame, slab


def _work_crop(grey, background: _Background, sign: float, scale: float, box, keep, config):
    """The ink's box, cropped from the full-resolution grey image and resampled to the working size.

    Returns float32 ink in [0, 1] (strokes ~1, background 0) with a margin around the box, or None.
    """
    from PIL import Image

    W, H = grey.size
    y0, y1, x0, x1 = (float(b) * scale for b in box)  # full-res pixel edges
    longer = max(y1 - y0, x1 - x0)
    margin = 0.25 * longer + 2 * scale
    X0, Y0 = max(0.0, x0 - margin), max(0.0, y0 - margin)
    X1, Y1 = min(float(W), x1 + margin), min(float(H), y1 + margin)
    k = config.work_size / longer  # work px per full-res px
    size = (max(1, round((X1 - X0) * k)), max(1, round((Y1 - Y0) * k)))
    resample = Image.Resampling.BOX if k < 1 else Image.Resampling.BICUBIC
    crop = grey.resize(size, resample, box=(X0, Y0, X1, Y1))
    g = np.asarray(crop, dtype=np.float32)  # (hw, ww)
    hw, ww = g.shape
    ys = Y0 + (np.arange(hw) + 0.5) * (Y1 - Y0) / hw  # full-res coordinates of the work pixel centres
    xs = X0 + (np.arange(ww) + 0.5) * (X1 - X0) / ww
    bg = background.at((xs / W * 2 - 1)[None, :], (ys / H * 2 - 1)[:, None])  # (hw, ww)
    residual = sign * (g - bg)
    if sign < 0:  # dark ink on lit paper: the contrast scales with the light, so measure it relative to the paper
        paper = max(float(bg.mean()), 1.0)
        residual *= paper / np.maximum(bg, 0.25 * paper)

    # specks outside the kept components: mask with the (grown) component region, mapped to this grid
    grown = shift_max(keep.astype(np.uint8), SQUARE)
    gy = np.clip(((ys / scale)).astype(int), 0, keep.shape[0] - 1)
    gx = np.clip(((xs / scale)).astype(int), 0, keep.shape[1] - 1)
    region = grown[np.ix_(gy, gx)].astype(bool)  # (hw, ww)

    outside = residual[~region]
    base = residual if outside.size < 16 else outside
    level = float(np.median(base))
    noise = max(1.4826 * float(np.median(np.abs(base - level))), 1.0)
    ink = np.where(region, np.maximum(residual - level - 2.5 * noise, 0.0), 0.0)  # (hw, ww)
    strong = ink[ink > 0.3 * ink.max()] if ink.max() > 0 else ink[:0]
    if strong.size == 0:
        return None
    contrast = float(np.percentile(strong, 75))
    lo, hi = config.edge_ramp  # a steep ramp at ~5x the final resolution: crisp edges, still grey after resampling
    return np.clip((ink / contrast - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _normalise_strokes(a: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Grow or thin the strokes so width / longer side falls inside `config.stroke_range`."""
    box = ink_box(a)
    if box is None:
        return a
    longer = max(box[1] - box[0], box[3] - box[2])
    w = stroke_width(a)
    lo, hi = config.stroke_range
    rel = w / longer
    if lo <= rel <= hi:
        return a
    t = lo if rel < lo else hi
    # (w ± 2r) / (L ± 2r) = t  ->  r = |t L - w| / (2 (1 - t))
    radius = abs(t * longer - w) / (2.0 * (1.0 - t))
    pad = int(math.ceil(radius)) + 2
    padded = np.pad(a, pad)
    return morph(padded, radius, grow=rel < lo)


def _place(a: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """MNIST's own recipe: the ink's box -> a `box` x `box` square keeping the aspect ratio (area-averaging
    anti-aliasing), then pasted into `size` x `size` at the whole-pixel offset that brings the intensity
    centre of mass closest to `config.center`; strokes stretched to reach 255."""
    from PIL import Image

    box = ink_box(a)
    if box is None:
        return np.zeros((config.size, config.size), dtype=np.uint8)
    y0, y1, x0, x1 = box
    side = max(y1 - y0, x1 - x0)
    pad = side
    padded = np.pad(a, pad)  # (h + 2p, w + 2p)
    cy, cx = (y0 + y1) / 2 + pad, (x0 + x1) / 2 + pad  # the square is centred on the box
    src = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    img = Image.fromarray(padded.astype(np.float32), mode="F")
    small = np.asarray(img.resize((config.box, config.box), Image.Resampling.BOX, box=src), dtype=np.float32)
    peak = float(small.max())
    if peak <= 0:
        return np.zeros((config.size, config.size), dtype=np.uint8)
    small = np.clip(np.rint(small * (255.0 / peak)), 0, 255).astype(np.uint8)  # (20, 20)
    # the centre of mass of the pixels actually returned: rounding to uint8 moves it by up to ~0.01 px, enough
    # to cross the half-pixel boundary when measured on the float image
    total = float(small.sum())
    idx = np.arange(config.box)
    com_y = float(small.sum(axis=1) @ idx) / total
    com_x = float(small.sum(axis=0) @ idx) / total
    limit = config.size - config.box
    oy = int(np.clip(round(config.center - com_y), 0, limit))
    ox = int(np.clip(round(config.center - com_x), 0, limit))
    out = np.zeros((config.size, config.size), dtype=np.uint8)
    out[oy : oy + config.box, ox : ox + config.box] = small  # (20, 20) -> (28, 28)
    return out
