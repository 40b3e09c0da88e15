"""When an input is not taken for a digit: ink evidence on the 28x28 input and the model's confidence."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from digitlab.images.morphology import label_regions


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
    labels = label_regions(x >= 64)  # (28, 28)
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
