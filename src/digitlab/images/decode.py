"""Decoding: any picture a user may have (path, bytes, stream, PIL image, array) -> PIL image, mode "L" or "RGB".

Bounded by construction: files and streams are read up to MAX_FILE_BYTES (FIFOs and devices are refused, never
waited on), a picture is judged by the size its header declares before any pixel is decoded, and large pictures
are decoded (JPEG draft) or reduced to about REDUCE_PIXELS. Every problem is one ImageError naming the file.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import ImageError

MAX_PIXELS = 16_000_000  # declared width x height above this is refused before decoding (a 16 MP photo fits)
MAX_ASPECT = 20  # longer side / shorter side above this is refused before decoding (no digit is a 1-px strip)
REDUCE_PIXELS = 6_000_000  # larger pictures are decoded (JPEG) or reduced right after decoding to about this size
MAX_FILE_BYTES = 64 * 1024 * 1024  # no picture of a digit is bigger; never read more than this (files, stdin)


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
        img = array_to_image(src, label)
    else:
        img = _open(read_bytes(src, label), label, max_pixels)
    w, h = img.size
    if w == 0 or h == 0:
        raise ImageError(f"{label}: empty image ({w}×{h} pixels)")
    return normalise_mode(_reduce(_orient(img)), label)


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


def _read_regular_file(path: Path, label: str, limit: int) -> bytes:
    """At most limit + 1 bytes of a regular file (fsutil.open_regular: a FIFO or device is refused unread)."""
    from digitlab.fsutil import NotRegularFileError, open_regular

    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise ImageError(f"{label}: too large: {size:,} bytes (limit {limit:,} bytes)")
            return f.read(limit + 1)
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{label}: is a directory, not an image") from None
    except NotRegularFileError as exc:  # strerror: "is a FIFO (named pipe), not a regular file"
        kind = exc.strerror.removeprefix("is ").removesuffix(", not a regular file")
        raise ImageError(f"{label}: not a regular file ({kind}); images are read from files only") from None
    except OSError as exc:
        raise ImageError(f"{label}: cannot read: {exc.strerror or exc}") from None


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


def array_to_image(arr: np.ndarray, label: str):
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


def normalise_mode(img, label: str):
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
        return array_to_image(a if mode == "F" else np.clip(a, 0, 65535), label)
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
