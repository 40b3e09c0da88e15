"""Photos and drawings -> 28x28 MNIST-style model input.

    from digitlab.images import load_image, to_mnist, predict_image
    img = load_image("my-digit.jpg")            # PIL.Image, mode "L" or "RGB"; raises ImageError
    x, found = to_mnist(img)                    # uint8 [28, 28], 0 = background, 255 = ink
    result = predict_image(model, "my-digit.jpg", top=3)
    result["digit"], result["probabilities"], result["input"], result["top"], result["found"]

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

import io
import math
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import ImageError

MAX_PIXELS = 16_000_000  # declared width x height above this is refused before decoding (a 16 MP photo fits)
MAX_ASPECT = 20  # longer side / shorter side above this is refused before decoding (no digit is a 1-px strip)
REDUCE_PIXELS = 6_000_000  # larger pictures are decoded (JPEG) or reduced right after decoding to about this size
MAX_FILE_BYTES = 64 * 1024 * 1024  # no picture of a digit is bigger; never read more than this (files, stdin)
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


# --------------------------------------------------------------------------------------------- decoding


def _source_name(src: Any, name: str | None) -> str:
    if name:
        return name
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return str(getattr(src, "name", None) or f"<{type(src).__name__}>")


def load_image(src: Any, *, name: str | None = None, max_pixels: int = MAX_PIXELS):
    """Decode `src` (path, bytes, file-like, PIL.Image or NumPy array) into a PIL image of mode "L" or "RGB".

    Takes the first frame of animations, applies the EXIF orientation, maps 16-bit/float/CMYK/palette
    images to 8-bit grey or RGB and flattens transparency onto white (onto black when the opaque content
    itself is light, so white strokes on a transparent canvas stay visible). Files and streams are read up
    to MAX_FILE_BYTES; the size a header declares is judged before any pixel is decoded (at most `max_pixels`
    pixels, at most MAX_ASPECT:1); large JPEGs are decoded at a reduced scale and other large pictures
    reduced by an integer factor right after decoding (to about REDUCE_PIXELS). Any problem raises
    `ImageError` naming the file: "empty file", "not a regular file", "not an image", "truncated or corrupt",
    "too large", "too elongated".
    """
    from PIL import Image

    label = _source_name(src, name)
    if isinstance(src, Image.Image):
        img = src
        _check_size(img.size, label, max_pixels)
        try:
            img.load()  # an Image.open() result is lazy: its pixels may still be unread (or broken)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"{label}: truncated or corrupt image data ({exc})") from None
    elif isinstance(src, np.ndarray):
        img = _array_to_image(src, label)
    else:
        img = _open(read_bytes(src, label), label, max_pixels)
    w, h = img.size
    if w == 0 or h == 0:
        raise ImageError(f"{label}: empty image ({w}×{h} pixels)")
    return _normalise_mode(_reduce(_orient(img)), label)


def read_bytes(src: Any, label: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a path (regular files only: a FIFO or device is refused, never waited on), a bytes
    object or a binary stream (stdin), never more than `limit`; ImageError otherwise."""
    if isinstance(src, (str, os.PathLike)):
        data = _read_regular_file(Path(src), label, limit)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    elif hasattr(src, "read"):
        data = src.read(limit + 1)
        if isinstance(data, str):
            raise ImageError(f"{label}: opened in text mode; images are binary")
    else:
        raise ImageError(f"{label}: cannot read an image from a {type(src).__name__}")
    if len(data) > limit:
        raise ImageError(f"{label}: too large: more than {limit:,} bytes")
    if len(data) == 0:
        raise ImageError(f"{label}: empty file (0 bytes)")
    return data


_FILE_KINDS = {stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def _read_regular_file(path: Path, label: str, limit: int) -> bytes:
    try:  # O_NONBLOCK: opening a FIFO must not wait for a writer; the kind is then checked on the open file
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{label}: is a directory, not an image") from None
    except OSError as exc:
        raise ImageError(f"{label}: cannot read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        kind = stat.S_IFMT(info.st_mode)
        if kind == stat.S_IFDIR:
            raise ImageError(f"{label}: is a directory, not an image")
        if kind != stat.S_IFREG:
            raise ImageError(f"{label}: not a regular file ({_FILE_KINDS.get(kind, 'a special file')}); images are read from files only")
        if info.st_size > limit:
            raise ImageError(f"{label}: too large: {info.st_size:,} bytes (limit {limit:,} bytes)")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(limit + 1)
    except OSError as exc:
        raise ImageError(f"{label}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _check_size(size: tuple[int, int], label: str, max_pixels: int, decoded: tuple[int, int] | None = None) -> None:
    """Refuse a picture by the size its header declares (`decoded`: the size a JPEG draft will decode), before a
    single pixel is decoded."""
    w, h = size
    dw, dh = decoded or size
    if dw * dh > max_pixels:
        raise ImageError(f"{label}: too large: {w}×{h} pixels (limit {max_pixels:,} pixels; possible decompression bomb)")
    if min(w, h) > 0 and max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageError(f"{label}: too elongated: {w}×{h} pixels (at most {MAX_ASPECT}:1)")


def _open(data: bytes, label: str, max_pixels: int):
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's chatter about odd metadata in files it can still read
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            declared = img.size
            if img.format in ("JPEG", "MPO") and declared[0] * declared[1] > REDUCE_PIXELS:
                f = math.sqrt(declared[0] * declared[1] / REDUCE_PIXELS)  # JPEG decodes at 1/2, 1/4 or 1/8 scale
                img.draft(None, (max(1, int(declared[0] / f)), max(1, int(declared[1] / f))))
            _check_size(declared, label, max_pixels, decoded=img.size)
            img.seek(0)  # first frame of a GIF/APNG/multi-page TIFF
            img.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image (Pillow cannot identify the format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        size = _claimed_size(data)
        what = f"{size[0]}×{size[1]} pixels" if size else str(exc)
        raise ImageError(f"{label}: too large: {what} (limit {max_pixels:,} pixels; possible decompression bomb)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, ZeroDivisionError, MemoryError) as exc:
        raise ImageError(f"{label}: truncated or corrupt image data ({exc})") from None
    return img


def _reduce(img):
    """Pictures over REDUCE_PIXELS -> an integer-factor box reduction (the digit needs ~100 px; saves memory)."""
    w, h = img.size
    k = math.ceil(math.sqrt(w * h / REDUCE_PIXELS))
    if k <= 1:
        return img
    if img.mode in ("P", "PA"):  # palette indices cannot be averaged
        img = img.convert("RGBA")
    elif img.mode == "1" or img.mode.startswith("I;16"):
        img = img.convert("L" if img.mode == "1" else "I")
    return img.reduce(k)


def _claimed_size(data: bytes) -> tuple[int, int] | None:
    """The size a file's header claims, read by the matching Pillow plugin without decoding any pixels.

    `Image.open` refuses a decompression bomb before telling its size; the plugin classes themselves
    only parse the header, so this gives the "50000×50000" a user can recognise.
    """
    from PIL import Image

    Image.init()
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        try:
            if accept is not None and not accept(data[:16]):
                continue
            return tuple(factory(io.BytesIO(data), "").size)
        except Exception:  # not this format after all; try the next plugin
            continue
    return None


def _array_to_image(arr: np.ndarray, label: str):
    """uint8/bool/float arrays: (H, W), (784,), (H, W, 3|4); floats in [0, 1] count as 0..255 scaled."""
    from PIL import Image

    a = np.asarray(arr)
    if a.ndim == 1 and a.size == 784:
        a = a.reshape(28, 28)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ImageError(f"{label}: an image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {a.shape}")
    if a.size == 0:
        raise ImageError(f"{label}: empty image array (shape {a.shape})")
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        f = a.astype(np.float64)
        if not np.isfinite(f).all():
            raise ImageError(f"{label}: image array contains NaN or infinite values")
        hi = f.max()
        scale = 255.0 if hi <= 1.0 else (255.0 / 65535.0 if hi > 255.0 else 1.0)
        a = np.clip(np.rint(f * scale), 0, 255).astype(np.uint8)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[a.shape[2] if a.ndim == 3 else 2]
    return Image.fromarray(np.ascontiguousarray(a), mode=mode)


def _orient(img):
    from PIL import ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data" and the like
            return ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not make a readable picture unusable
        return img


def _normalise_mode(img, label: str):
    """Any Pillow mode -> "L" or "RGB" (8-bit), transparency flattened."""
    from PIL import Image

    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float grey
        a = np.asarray(img, dtype=np.float64)  # (H, W)
        if a.ndim != 2:
            a = np.asarray(img.convert("F"), dtype=np.float64)
        if mode.startswith("I;16"):
            a = a / 257.0  # 16-bit grey: 65535 is white, whatever the picture's own range
        return _array_to_image(a if mode == "F" else np.clip(a, 0, 65535), label)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info)
    if not has_alpha:
        return img.convert("L" if mode in ("P",) and _palette_is_grey(img) else "RGB")
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)  # (H, W, 4)
    alpha = rgba[:, :, 3:] / 255.0  # (H, W, 1)
    return Image.fromarray(_flatten(rgba[:, :, :3], alpha), mode="RGB")


def _palette_is_grey(img) -> bool:
    pal = img.getpalette() or []
    rgb = np.asarray(pal, dtype=np.int32).reshape(-1, 3) if len(pal) % 3 == 0 else np.zeros((0, 3))
    return bool(len(rgb)) and bool((rgb == rgb[:, :1]).all())


def _flatten(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite (H, W, 3) colour with (H, W, 1) alpha onto white, or onto black if the drawn content is light."""
    weight = alpha[:, :, 0]
    total = float(weight.sum())
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (H, W, 3) @ (3,) -> (H, W)
    content = float((luma * weight).sum() / total) if total > 0 else 0.0
    paper = 0.0 if (total > 0 and content > 128.0 and float(weight.min()) < 1.0) else 255.0
    out = rgb * alpha + paper * (1.0 - alpha)  # (H, W, 3)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------- preprocessing


def to_mnist(img, config: PreprocessConfig = DEFAULT_CONFIG) -> tuple[np.ndarray, bool]:
    """MNIST-style uint8 [28, 28] (0 = background, 255 = ink) from a PIL image, and whether a digit was found.

    When no digit is found (blank, flat or near-empty input) the array is all zeros and `found` is False.
    """
    if isinstance(img, np.ndarray):
        img = _array_to_image(img, "<array>")
    grey = _normalise_mode(img, "<image>").convert("L")
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


def _shift_max(a: np.ndarray, offsets) -> np.ndarray:
    """Maximum of `a` over the given (dy, dx) offsets (a flat structuring element); outside counts as 0."""
    h, w = a.shape
    r = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    p = np.zeros((h + 2 * r, w + 2 * r), dtype=a.dtype)  # (h + 2r, w + 2r)
    p[r : r + h, r : r + w] = a
    out = np.full_like(a, np.finfo(a.dtype).min if a.dtype.kind == "f" else np.iinfo(a.dtype).min)
    for dy, dx in offsets:
        np.maximum(out, p[r + dy : r + dy + h, r + dx : r + dx + w], out=out)
    return out


_SQUARE = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
_GRID = 64  # connected components are found on a grid of at most this many cells a side


def _pool(a: np.ndarray, f: int) -> np.ndarray:
    """f x f block maximum (the array is zero-padded up to a multiple of f)."""
    h, w = a.shape
    p = np.zeros((-(-h // f) * f, -(-w // f) * f), dtype=a.dtype)
    p[:h, :w] = a
    return p.reshape(p.shape[0] // f, f, p.shape[1] // f, f).max(axis=(1, 3))  # (h/f, w/f)


def _run_max(labels: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Every horizontal run of True cells in `grid` takes the largest label found in it (2-D arrays)."""
    h, w = grid.shape
    g = np.zeros((h, w + 1), dtype=bool)  # a False column ends each row's last run
    g[:, :w] = grid
    lab = np.zeros((h, w + 1), dtype=labels.dtype)
    lab[:, :w] = labels
    g, lab = g.ravel(), lab.ravel()
    starts = g & ~np.concatenate(([False], g[:-1]))
    run = np.cumsum(starts) * g  # (h * (w + 1),) run number, 0 off the runs
    best = np.zeros(int(run.max()) + 1, dtype=labels.dtype)
    np.maximum.at(best, run, lab)
    best[0] = 0
    return best[run].reshape(h, w + 1)[:, :w]


def _label(grid: np.ndarray) -> np.ndarray:
    """int32 labels (0 = background) of the 4-connected True regions of a bool grid: every cell starts with its
    own label, and the largest spreads along whole row and column runs until nothing changes."""
    labels = np.where(grid, np.arange(1, grid.size + 1, dtype=np.int32).reshape(grid.shape), 0)
    for _ in range(grid.size):
        new = _run_max(_run_max(labels, grid).T, grid.T).T  # spread along rows, then along columns
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def _main_components(mask: np.ndarray, ink: np.ndarray, share: float) -> np.ndarray | None:
    """The region (bool, like `mask`) of the ink components that carry at least `share` of the ink.

    Components are labelled on a pooled (<= 64 cells a side), slightly dilated copy of the mask, so a
    broken stroke stays one component; labels spread along whole row and column runs until they settle
    (whole-array steps, no per-pixel loop).
    """
    h, w = mask.shape
    f = max(1, -(-max(h, w) // _GRID))
    grid = _shift_max(_pool(mask.astype(np.uint8), f), _SQUARE).astype(bool)  # (gh, gw)
    labels = _label(grid)
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
    inner = -_shift_max(-mask.astype(np.int8), [(0, 1), (0, -1), (1, 0), (-1, 0), (0, 0)])  # 4-neighbour erosion
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
    grown = _shift_max(keep.astype(np.uint8), _SQUARE)
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


def _disc(radius: int):
    r = int(radius)
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= r * r + r]


def _morph(a: np.ndarray, radius: float, grow: bool) -> np.ndarray:
    """Grey dilation (grow) or erosion with a disc of fractional radius, blending the two integer radii."""
    if radius <= 0:
        return a
    lo = int(math.floor(radius))
    frac = radius - lo

    def once(r: int) -> np.ndarray:
        if r == 0:
            return a
        return _shift_max(a, _disc(r)) if grow else -_shift_max(-a, _disc(r))

    out = once(lo)
    if frac > 1e-3:
        out = (1.0 - frac) * out + frac * once(lo + 1)
    return out.astype(np.float32)


def _ink_box(a: np.ndarray, level: float = 0.1):
    ys, xs = np.nonzero(a > level)
    if ys.size == 0:
        return None
    return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


def stroke_width(a: np.ndarray) -> float:
    """Mean stroke width of a soft ink image (float, ink ~1), in pixels: 2 x ink area / boundary length."""
    gy, gx = np.gradient(a.astype(np.float64))  # (h, w) each
    perimeter = float(np.hypot(gy, gx).sum())
    return 2.0 * float(a.sum()) / perimeter if perimeter > 0 else 0.0


def _normalise_strokes(a: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Grow or thin the strokes so width / longer side falls inside `config.stroke_range`."""
    box = _ink_box(a)
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
    return _morph(padded, radius, grow=rel < lo)


def _place(a: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """MNIST's own recipe: the ink's box -> a `box` x `box` square keeping the aspect ratio (area-averaging
    anti-aliasing), then pasted into `size` x `size` at the whole-pixel offset that brings the intensity
    centre of mass closest to `config.center`; strokes stretched to reach 255."""
    from PIL import Image

    box = _ink_box(a)
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


# ------------------------------------------------------------------------------------------- not a digit


@dataclass(frozen=True)
class RejectRules:
    """When an input is not taken for a digit. Each ink threshold lets through at least 99.9 % of MNIST's training
    digits after `to_mnist` (one-sided); the confidence floor lets through 99 % of held-out digits (MNIST
    validation, a model trained without them). Measured by bench/reject_threshold.py, which also reports the
    false-rejection rate on MNIST test and the rejection rate on generated scribbles (with these values and the
    mlp recipe: 0.94 % of MNIST test rejected, 85 % of scribbles: dots 99-100 %, dashes 100 %, blobs 91 %, scrawls
    56 %)."""

    min_ink: float = 35.0  # sum of the 28x28 input / 255: less is a speck (MNIST 0.1 %: 35.6)
    max_ink: float = 188.0  # more is a scrawl over the whole pad (MNIST 99.9 %: 188)
    min_height: int = 12  # ink box height in pixels (the longer side is always 20): less is a dash (0.1 %: 12)
    max_fill: float = 0.69  # share of the ink box that is solid ink (>= 128): more is a blob or a dot (99.9 %: 0.69)
    blob_side: int = 8  # ... when the box's narrower side has at least this many pixels (a straight "1" is solid)
    # separate marks (4-connected ink >= 64 holding >= 8 % of the ink each): more is a scatter. MNIST's 99.9 % is
    # one; two are allowed because a digit drawn on the pad often has a detached stroke (a 5's bar, a 7's crossbar)
    max_parts: int = 2
    min_confidence: float = 0.55  # the best class's probability: less is "not sure" (held-out 1 %: 0.548)


DEFAULT_RULES = RejectRules()


def ink_evidence(x: np.ndarray) -> dict:
    """Shape figures of a 28x28 uint8 input (255 = ink): ink (sum / 255), height and width of the ink box, fill
    (solid share of the box), parts (separate marks holding >= 8 % of the ink)."""
    f = x.astype(np.float32) / 255.0  # (28, 28)
    rows, cols = np.nonzero(x.any(axis=1))[0], np.nonzero(x.any(axis=0))[0]
    if rows.size == 0:
        return {"ink": 0.0, "height": 0, "width": 0, "fill": 0.0, "parts": 0}
    height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    solid = x >= 128
    labels = _label(x >= 64)  # (28, 28)
    mass = np.bincount(labels.ravel(), weights=f.ravel())[1:]  # ink per label
    return {
        "ink": float(f.sum()),
        "height": height,
        "width": width,
        "fill": float(solid.sum()) / (height * width),
        "parts": int((mass >= 0.08 * mass.sum()).sum()) if mass.sum() > 0 else 0,
    }


def rejection(x: np.ndarray, proba: np.ndarray, found: bool, rules: RejectRules = DEFAULT_RULES) -> str | None:
    """Why the 28x28 input `x` with class probabilities `proba` (C,) is not taken for a digit, or None."""
    if not found:
        return "no ink found"
    e = ink_evidence(x)
    if e["ink"] < rules.min_ink:
        return "too little ink for a digit"
    if e["height"] < rules.min_height:
        return "a flat mark, not a digit"
    if e["fill"] > rules.max_fill and min(e["height"], e["width"]) >= rules.blob_side:
        return "a blob or dot, not a digit"
    if e["parts"] > rules.max_parts:
        return f"{e['parts']} separate marks, not one digit"
    if e["ink"] > rules.max_ink:
        return "too much ink for a digit"
    order = np.argsort(-proba)
    if float(proba[order[0]]) < rules.min_confidence:
        return f"not sure: maybe {int(order[0])} or {int(order[1])}"
    return None


# ------------------------------------------------------------------------------------------- prediction


def predict_image(model, src: Any, top: int = 3, *, name: str | None = None, config: PreprocessConfig = DEFAULT_CONFIG,
                  rules: RejectRules | None = DEFAULT_RULES):
    """Preprocess `src` like MNIST and ask `model` (a Classifier) for its probabilities.

    Returns {"digit": int or None, "reason": None or why there is no digit, "probabilities": [10 floats],
    "input": uint8 [28, 28], "top": [(digit, p), ...] (best first), "found": bool (ink was found)}. The
    probabilities are the model's answer for the 28x28 input even when "digit" is None: no ink found, or the
    ink or the model's confidence says it is not a digit (`rules`; None: always answer when ink was found).
    """
    img = load_image(src, name=name)
    x, found = to_mnist(img, config)
    proba = np.asarray(model.predict_proba(x[None]), dtype=np.float64)[0]  # (1, 28, 28) -> (C,)
    order = np.argsort(-proba, kind="stable")[: max(1, int(top))]
    reason = ("no ink found" if not found else None) if rules is None else rejection(x, proba, found, rules)
    return {
        "digit": None if reason else int(order[0]),
        "reason": reason,
        "probabilities": [float(p) for p in proba],
        "input": x,
        "top": [(int(i), float(proba[i])) for i in order],
        "found": bool(found),
    }
