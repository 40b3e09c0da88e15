"""Random augmentation of image batches: affine (rotation, scale and sub-pixel translation, bilinear sampling)
and left-right mirroring.

    from digitlab.augment import random_affine, warp
    rng = np.random.default_rng(0)
    moved = random_affine(images, rng, rotate=12.0, scale=0.1, translate=2.0)   # float32 (B, 28, 28)
    same = warp(images, angle=np.zeros(B), scale=np.ones(B), shift=np.zeros((B, 2)))  # == images, exactly
    mirrored = random_flip(images, rng)          # each image mirrored left-right with probability 1/2

Works on pixel values, not on normalised ones: `images` are uint8 0..255 (or float in any scale whose
background is `fill`, 0 by default) of shape (B, H, W) or (B, H, W, 1), and the result is float (float32 for
integer input) with the same pixel scale and shape. `digitlab.data.dataset.batches` warps the raw 0..255
pixels *before* normalising, so pixels brought in from outside are background 0 and normalise like every
other 0 pixel (-0.424 under "standard"); since normalisation is affine and bilinear sampling is a convex
combination, warping first and normalising after gives the same result as the other way round.

Each image is mapped about its centre ((H-1)/2, (W-1)/2): output pixel p takes the source value at
A^-1 (p - c - t) + c with A = scale * R(angle), so a positive `shift` (dy, dx) moves the content down/right and
a positive angle turns it counter-clockwise on screen (like np.rot90). Vectorised over the batch: one set of
coordinates per image, four gathers from a padded copy, no Python loop over images. Array math goes through
`array_module`, so a CuPy batch stays on the GPU (the random parameters are drawn on the host, 4 per image).
"""

from __future__ import annotations

import math

import numpy as np

from digitlab.errors import ConfigError, DataError
from digitlab.nn.backend import array_module

__all__ = ["random_affine", "random_flip", "warp", "draw_params", "check_limits"]


LIMITS = {"rotate": (180.0, True, "0..180 degrees"), "scale": (1.0, False, "a fraction in [0, 1)"),
          "translate": (28.0, False, "in [0, 28) pixels")}  # name -> (upper bound, bound allowed, wording)


def check_limits(rotate: float, scale: float, translate: float) -> None:
    """ConfigError unless 0 <= rotate <= 180 (degrees), 0 <= scale < 1 (fraction), 0 <= translate < 28 (pixels)."""
    for name, value in (("rotate", rotate), ("scale", scale), ("translate", translate)):
        top, inclusive, wording = LIMITS[name]
        number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        if not (number and 0.0 <= value and (value <= top if inclusive else value < top)):  # False for NaN
            raise ConfigError(f"augmentation {name} = {value!r} must be {wording}")


def draw_params(rng: np.random.Generator, n: int, rotate: float, scale: float, translate: float):
    """Per-image parameters from ONE draw of (4, n) uniforms (so the stream advances by the same amount
    whatever the limits): angle radians (n,) in +-rotate degrees, scale (n,) in [1-scale, 1+scale], shift
    (n, 2) pixels (dy, dx) each in +-translate."""
    u = rng.random((4, n)) * 2.0 - 1.0                                   # (4, n) uniform on [-1, 1)
    angle = u[0] * math.radians(rotate)
    zoom = 1.0 + u[1] * scale
    shift = u[2:].T * translate                                          # (n, 2)
    return angle, zoom, shift


def _as_batch(images):
    if images.ndim == 4 and images.shape[3] == 1:
        return images[..., 0]                                            # (B, H, W, 1) -> (B, H, W), a view
    if images.ndim != 3:
        raise DataError(f"augmentation needs a batch of images (B, H, W) or (B, H, W, 1), got shape {images.shape}")
    return images


def warp(images, angle, scale, shift, fill: float = 0.0):
    """Warp each image b by rotation angle[b] (radians), zoom scale[b] and translation shift[b] = (dy, dx)
    pixels about its centre, sampling bilinearly; pixels whose source lies outside are `fill`."""
    xp = array_module(images)
    x = _as_batch(images)
    b, h, w = x.shape
    dt = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
    cos, sin = xp.asarray(np.cos(angle) / scale, dt), xp.asarray(np.sin(angle) / scale, dt)  # (B,) A^-1 entries
    shift = np.asarray(shift, dtype=np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    gy = (xp.arange(h, dtype=dt) - dt.type(cy))[None, :, None] - xp.asarray(shift[:, 0], dt)[:, None, None]  # (B, H, 1)
    gx = (xp.arange(w, dtype=dt) - dt.type(cx))[None, None, :] - xp.asarray(shift[:, 1], dt)[:, None, None]  # (B, 1, W)
    c3, s3 = cos[:, None, None], sin[:, None, None]
    # A^-1 = R(-angle) / scale on (row, col) with rows pointing down: a counter-clockwise turn on screen.
    # Small (B, H, 1) and (B, 1, W) terms first, so each full-size coordinate array costs one pass.
    sy = (c3 * gy + dt.type(cy)) + s3 * gx                               # (B, H, W) source rows
    sx = (c3 * gx + dt.type(cx)) - s3 * gy                               # (B, H, W) source columns
    # A copy with a 2-pixel `fill` border. Clipping the sources to -2..H (-2..W) keeps all four neighbours
    # inside the copy; a source clipped there has both neighbours outside the image, which read `fill`.
    xp.clip(sy, -2, h, out=sy)
    xp.clip(sx, -2, w, out=sx)
    y0, x0 = xp.floor(sy), xp.floor(sx)                                  # (B, H, W) top-left neighbour
    sy -= y0                                                             # (B, H, W) weights in [0, 1)
    sx -= x0
    pw = w + 4
    padded = xp.full((b, h + 4, pw), fill, dtype=dt)                     # (B, H+4, W+4)
    padded[:, 2:-2, 2:-2] = x
    flat = padded.reshape(-1)
    y0 *= pw
    y0 += x0                                                             # offset inside one image: exact in float
    idx = y0.astype(xp.intp)
    idx += (xp.arange(b, dtype=xp.intp) * ((h + 4) * pw) + (2 * pw + 2))[:, None, None]  # flat index into padded
    top = xp.take(flat, idx)                                             # flat[k:][idx] == flat[idx + k]
    right = xp.take(flat[1:], idx)
    right -= top
    right *= sx
    top += right                                                         # lerp along x, upper row
    bottom = xp.take(flat[pw:], idx)
    right = xp.take(flat[pw + 1:], idx)
    right -= bottom
    right *= sx
    bottom += right                                                      # lerp along x, lower row
    bottom -= top
    bottom *= sy
    top += bottom                                                        # (B, H, W) lerp along y
    return top.reshape(images.shape)


def random_affine(images, rng: np.random.Generator, *, rotate: float = 0.0, scale: float = 0.0,
                  translate: float = 0.0, fill: float = 0.0):
    """Each image of the batch rotated by up to +-`rotate` degrees, zoomed by a factor in 1 +- `scale` and moved
    by up to +-`translate` pixels per axis (all uniform, drawn from `rng`: 4 numbers per image)."""
    check_limits(rotate, scale, translate)
    angle, zoom, shift = draw_params(rng, len(images), rotate, scale, translate)
    return warp(images, angle, zoom, shift, fill)


def random_flip(images, rng: np.random.Generator):
    """A new batch in which each image is mirrored left-right with probability 1/2 (one uniform per image drawn
    from `rng`, whatever the batch holds); the others are copied unchanged. Vectorised: one `where` over the
    batch."""
    xp = array_module(images)
    x = _as_batch(images)
    mirror = xp.asarray(rng.random(len(x)) < 0.5)                      # (B,) which images to mirror
    return xp.where(mirror[:, None, None], x[:, :, ::-1], x).reshape(images.shape)
