"""Photos and drawings -> 28x28 MNIST-style model input, and the model's answer for them.

    from digitlab.images import load_image, to_mnist, predict_image
    img = load_image("my-digit.jpg")            # PIL.Image, mode "L" or "RGB"; raises ImageError
    x, found = to_mnist(img)                    # uint8 [28, 28], 0 = background, 255 = ink
    result = predict_image(model, "my-digit.jpg", top=3)
    result["digit"], result["reason"], result["probabilities"], result["input"], result["top"], result["found"]

decode.py (reading and decoding, bounded), preprocess.py (the MNIST-style preprocessing, step by step in its
docstring), morphology.py (array helpers), reject.py ("not a digit / not sure"); this module joins them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from digitlab.images.decode import (
    MAX_ASPECT, MAX_FILE_BYTES, MAX_PIXELS, REDUCE_PIXELS, load_image, read_bytes,
)
from digitlab.images.morphology import stroke_width
from digitlab.images.preprocess import DEFAULT_CONFIG, MNIST_CENTER, PreprocessConfig, to_mnist
from digitlab.images.reject import DEFAULT_RULES, RejectRules, ink_evidence, rejection

__all__ = [
    "DEFAULT_CONFIG", "DEFAULT_RULES", "MAX_ASPECT", "MAX_FILE_BYTES", "MAX_PIXELS", "MNIST_CENTER", "REDUCE_PIXELS",
    "PreprocessConfig", "RejectRules", "ink_evidence", "load_image", "predict_image", "read_bytes", "rejection",
    "stroke_width", "to_mnist",
]


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
