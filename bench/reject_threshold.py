"""Choose and check the "not a digit / not sure" rules of digitlab.images (RejectRules) on MNIST.

    .venv/bin/python bench/reject_threshold.py --data-dir ../shared/data/mnist [--json]

1. Ink rules: the 28x28 inputs `to_mnist` makes of N MNIST training digits; each one-sided threshold is the
   0.1 % / 99.9 % point (ink, box height, solid share of the box, separate marks).
2. Confidence floor: the default `mlp` recipe trained with 10,000 training images held out (`val_size`); the
   floor is the 1st percentile of its best-class probability on those held-out digits (after `to_mnist`).
3. Report, with the rules in digitlab.images.DEFAULT_RULES: the false-rejection rate on the 10,000 MNIST test
   digits (after `to_mnist`), why they were rejected, the accuracy on the ones answered, and the rejection rate
   on generated non-digit scribbles (tests/photolike.py `scribble`, 280 x 280 pad-like PNGs) per kind.
Figures go to stdout; the chosen values are put into RejectRules by hand (with this command in its docstring).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from photolike import SCRIBBLES, scribble  # noqa: E402

import digitlab  # noqa: E402
from digitlab.data.dataset import train_val_split  # noqa: E402
from digitlab.images import DEFAULT_RULES, ink_evidence, load_image, predict_image, rejection, to_mnist  # noqa: E402


def mnist_inputs(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 28, 28] MNIST digits -> what to_mnist makes of them, and whether ink was found."""
    pairs = [to_mnist(img) for img in images]
    return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--n-ink", type=int, default=5000, help="training digits for the ink thresholds")
    ap.add_argument("--n-scribbles", type=int, default=700, help="generated non-digits (spread over the kinds)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from digitlab.train import _rngs, train_recipe

    train_x, train_y = digitlab.data.load("mnist", split="train", data_dir=args.data_dir)
    test_x, test_y = digitlab.data.load("mnist", split="test", data_dir=args.data_dir)

    # 1. ink thresholds from training digits
    rng = np.random.default_rng(0)
    xs, _ = mnist_inputs(train_x[rng.choice(len(train_x), args.n_ink, replace=False)])
    ev = [ink_evidence(x) for x in xs]
    col = {k: np.array([e[k] for e in ev], dtype=np.float64) for k in ("ink", "height", "fill", "parts")}
    ink_rules = {
        "min_ink": float(np.percentile(col["ink"], 0.1)),
        "max_ink": float(np.percentile(col["ink"], 99.9)),
        "min_height": int(np.floor(np.percentile(col["height"], 0.1))),
        "max_fill": float(np.percentile(col["fill"], 99.9)),
        "max_parts": int(np.ceil(np.percentile(col["parts"], 99.9))),
    }

    # 2. confidence floor on held-out digits
    with tempfile.TemporaryDirectory() as tmp:
        run = train_recipe("mlp", overrides={"val_size": 10_000}, out_dir=Path(tmp) / "run", data_dir=args.data_dir,
                           quiet=True, report=False)
    _, val_idx = train_val_split(train_y, 10_000, seed=_rngs(0)["split"])
    model = run.model
    val_acc = float((model.predict(train_x[val_idx]) == train_y[val_idx]).mean())
    assert abs(val_acc - run.val_accuracy) < 1e-9, "not the validation digits the run held out"
    vx, _ = mnist_inputs(train_x[val_idx])
    floor = float(np.percentile(model.predict_proba(vx).max(axis=1), 1.0))

    # 3. the rules in the code, on MNIST test and on scribbles
    tx, tfound = mnist_inputs(test_x)
    proba = model.predict_proba(tx)  # (10000, 10)
    reasons = [rejection(x, p, f) for x, p, f in zip(tx, proba, tfound)]
    rejected = np.array([r is not None for r in reasons])
    answered_right = float((proba.argmax(1)[~rejected] == test_y[~rejected]).mean())
    why = Counter(r.split(":")[0] if r else "answered" for r in reasons)
    srng = np.random.default_rng(1)
    per_kind: dict[str, list[bool]] = {k: [] for k in SCRIBBLES}
    for i in range(args.n_scribbles):
        kind = SCRIBBLES[i % len(SCRIBBLES)]
        result = predict_image(model, load_image(scribble(srng, kind)))
        per_kind[kind].append(result["digit"] is None)
    all_scribbles = [v for vs in per_kind.values() for v in vs]
    figures = {
        "ink_rules_from_training_digits": ink_rules,
        "confidence_floor_1pct_of_heldout": floor,
        "rules_in_code": DEFAULT_RULES.__dict__,
        "heldout_model_val_accuracy": run.val_accuracy,
        "mnist_test_false_rejection_rate": float(rejected.mean()),
        "mnist_test_rejections_by_reason": dict(why),
        "mnist_test_accuracy_when_answered": answered_right,
        "mnist_test_accuracy_all": float((proba.argmax(1) == test_y).mean()),
        "scribble_rejection_rate": float(np.mean(all_scribbles)),
        "scribble_rejection_by_kind": {k: float(np.mean(v)) for k, v in per_kind.items()},
    }
    print(json.dumps(figures, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
