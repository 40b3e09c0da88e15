"""`digitlab recipes | train | evaluate | reproduce | gradcheck`: the training commands.

    digitlab recipes                                   # list the recipes
    digitlab train                                     # the default `mlp` recipe -> runs/mlp-YYYYmmdd-HHMMSS/
    digitlab train --recipe seed-004-mlp-relu --epochs 5 --out runs/s4
    digitlab train --resume runs/s4                    # continue an interrupted run
    digitlab evaluate runs/s4/model.safetensors --split test --json
    digitlab reproduce                                 # all five seed notebooks: theirs vs ours
    digitlab gradcheck --recipe seed-002-mlp-sigmoid-mse

Every command takes `--json`. Heavy work is imported inside the command functions.
"""

from __future__ import annotations

import argparse
import sys

from digitlab.commands._common import add_json_flag, emit


def register(subparsers) -> None:
    _register_recipes(subparsers)
    _register_train(subparsers)
    _register_evaluate(subparsers)
    _register_reproduce(subparsers)
    _register_gradcheck(subparsers)


def _hidden(text: str) -> tuple[int, ...]:
    """'300,100' -> (300, 100); '' or 'none' -> () (a linear model)."""
    if text.strip().lower() in ("", "none", "0"):
        return ()
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of widths like 300,100") from None
    if any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"{text!r}: widths must be >= 1")
    return widths


# ------------------------------------------------------------------------------------------------ recipes
def _register_recipes(sub) -> None:
    p = sub.add_parser("recipes", help="list the training recipes", description="List the training recipes.")
    add_json_flag(p)
    p.set_defaults(func=cmd_recipes)


def cmd_recipes(args) -> int:
    from digitlab.recipes import DEFAULT_RECIPE, list_recipes

    recipes = list_recipes()
    rows = [
        {"name": r.name, "description": r.description, "system": r.system, "metric": r.reported_metric,
         "reported": r.reported, "target": r.target, "default": r.name == DEFAULT_RECIPE}
        for r in recipes
    ]
    width = max(len(r.name) for r in recipes)
    text = "\n".join(f"{r.name:<{width}}  {r.description}{'  [default]' if r.name == DEFAULT_RECIPE else ''}"
                     for r in recipes)
    emit(args, rows, text)
    return 0


# ------------------------------------------------------------------------------------------------ train
# flag -> (recipe field, type, help)
TRAIN_OVERRIDES = {
    "epochs": (int, "passes over the training set"),
    "steps": (int, "train for exactly this many steps instead of epochs"),
    "lr": (float, "(peak) learning rate"),
    "batch_size": (int, "mini-batch size (0 = full batch)"),
    "hidden": (_hidden, "hidden layer widths, e.g. 300,100 ('none' = linear model)"),
    "activation": (str, "hidden activation: relu, leaky_relu, sigmoid, tanh"),
    "optimizer": (str, "sgd, momentum, nesterov or adam"),
    "dropout": (float, "dropout rate after each hidden activation (0 = none)"),
    "shift": (int, "augmentation: move each training image by up to this many pixels (0 = none)"),
    "rotate": (float, "augmentation: turn each training image by up to this many degrees (0 = none)"),
    "scale": (float, "augmentation: zoom each training image by 1 +- this fraction (0 = none)"),
    "translate": (float, "augmentation: move each training image by up to this many pixels, sub-pixel (0 = none)"),
    "flip": (bool, "augmentation: mirror each training image left-right with probability 1/2 (--no-flip: never)"),
    "label_smoothing": (float, "softmax_ce label smoothing in [0, 1) (0 = none)"),
    "schedule": (str, "learning-rate schedule: constant, cosine, step or onecycle"),
    "seed": (int, "the one seed for init, splits, order, shifts and dropout"),
    "dataset": (str, "data set name: mnist, fashion-mnist, mnist-sample"),
    "dtype": (str, "float32 or float64"),
    "threads": (int, "BLAS threads while training (0 = automatic)"),
    "shards": (int, "split each batch into this many parts trained in parallel threads (1 = none)"),
}


def _register_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model from a recipe",
        description="Train a model from a recipe into a run folder (config, history.csv, checkpoint, "
                    "model.safetensors, summary.json, report). Options left out keep the recipe's values.",
    )
    p.add_argument("--recipe", type=str, default=None,
                   help="recipe name or path to a .toml (default: the default recipe, marked in `digitlab recipes`)")
    for name, (kind, text) in TRAIN_OVERRIDES.items():
        how = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": kind}  # --flip / --no-flip
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=f"{text} (default: the recipe's)",
                       **how)
    p.add_argument("--data-dir", type=str, default=None,
                   help="folder holding the data set files (default: digitlab's usual lookup and cache)")
    p.add_argument("--out", type=str, default=None, help="run folder (default: runs/<recipe>-<YYYYmmdd-HHMMSS>)")
    p.add_argument("--resume", type=str, default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its checkpoint (other options are ignored)")
    p.add_argument("--quiet", action="store_true", default=False, help="no progress bar or per-epoch lines")
    add_json_flag(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from digitlab.train import TrainingInterrupted, train_recipe

    overrides = {k: getattr(args, k) for k in TRAIN_OVERRIDES if getattr(args, k) is not None}
    quiet = args.quiet or args.json
    try:
        if args.resume:
            result = train_recipe(None, None, out_dir=args.resume, data_dir=args.data_dir, quiet=quiet, resume=True,
                                  log=lambda line: print(line, file=sys.stderr))
        else:
            result = train_recipe(args.recipe, overrides, out_dir=args.out, data_dir=args.data_dir, quiet=quiet)
    except TrainingInterrupted as exc:
        print(f"digitlab: {exc}", file=sys.stderr)
        return 130
    summary = result.summary()
    metric = "test accuracy" if result.test_accuracy is not None else "validation accuracy"
    value = result.test_accuracy if result.test_accuracy is not None else result.val_accuracy
    per_epoch = sum(result.epoch_seconds) / max(len(result.epoch_seconds), 1)
    text = (f"{result.recipe.name}: {metric} {100 * value:.2f} % after {len(result.history)} epochs "
            f"({per_epoch:.2f} s per epoch, {sum(result.epoch_seconds):.1f} s training)\n"
            f"model: {result.model_path}")
    emit(args, summary, text)
    return 0


# ------------------------------------------------------------------------------------------------ evaluate
def _register_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy, loss and per-class accuracy of a model file",
                       description="Evaluate a model file on a data set split.")
    p.add_argument("model", type=str, metavar="MODEL", help="path to a model.safetensors (or a run folder)")
    p.add_argument("--dataset", type=str, default=None, help="data set name (default: the one it was trained on)")
    p.add_argument("--split", type=str, default="test", choices=("train", "test"), help="which split (default: test)")
    p.add_argument("--data-dir", type=str, default=None, help="folder holding the data set files")
    add_json_flag(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from pathlib import Path

    import digitlab
    from digitlab.train import evaluate_file

    path = Path(args.model)
    if path.is_dir():
        path = path / "model.safetensors"
    model = digitlab.load(path)
    result = evaluate_file(model, dataset=args.dataset, split=args.split, data_dir=args.data_dir)
    per_class = "  ".join(f"{i}:{100 * a:.1f}" for i, a in enumerate(result["per_class"]))
    text = (f"{path}: {result['dataset']} {result['split']} ({result['n']} images): "
            f"accuracy {100 * result['accuracy']:.2f} %, loss {result['loss']:.4f}\nper class %: {per_class}")
    emit(args, result, text)
    return 0


# ------------------------------------------------------------------------------------------------ reproduce
def _register_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="rerun the seed notebooks' systems and compare with their figures",
                       description="Run the seed recipes and print recipe | system | notebook's figure | ours | time.")
    p.add_argument("recipes", nargs="*", type=str, default=[], metavar="RECIPE",
                   help="recipes to run (default: all seed-* recipes)")
    p.add_argument("--data-dir", type=str, default=None, help="folder holding the data set files")
    p.add_argument("--out", type=str, default=None,
                   help="folder for the run folders (default: runs/reproduce-<YYYYmmdd-HHMMSS>)")
    p.add_argument("--quiet", action="store_true", default=False, help="no progress line per recipe")
    p.add_argument("--report", action="store_true", default=False,
                   help="also write each run's plots, report.md and report.html (slower)")
    p.add_argument("--strict", action="store_true", default=False,
                   help="exit with status 1 when a recipe misses its target (default: just mark it MISSED)")
    add_json_flag(p)
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args) -> int:
    from digitlab.reproduce import reproduce
    from digitlab.train import TrainingInterrupted

    try:
        rows = reproduce(args.recipes or None, out_dir=args.out, data_dir=args.data_dir,
                         quiet=args.quiet or args.json, report=args.report)
    except TrainingInterrupted as exc:
        print(f"digitlab: {exc}", file=sys.stderr)
        return 130
    emit(args, rows, _reproduce_table(rows))
    return 1 if args.strict and not all(r["ok"] for r in rows) else 0


def _reproduce_table(rows) -> str:
    def pct(x):
        return "—" if x is None else f"{100 * x:.2f} %"

    lines = ["| recipe | system | notebook's figure | ours | target | training time |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        metric = "test" if r["metric"] == "test_accuracy" else "val"
        reported = r["reported_note"] if r["reported"] is None else f"{pct(r['reported'])} {metric}"
        mark = "ok" if r["ok"] else "MISSED"
        judged = r.get("judged", "target")
        bar = f"≥ {pct(r['target'])}" if judged in ("target", "no target") else judged
        lines.append(f"| {r['recipe']} | {r['system']} | {reported} | {pct(r['ours'])} {metric} | "
                     f"{bar} {mark} | {r['seconds']:.1f} s |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ gradcheck
def _register_gradcheck(sub) -> None:
    p = sub.add_parser("gradcheck", help="check a recipe model's gradients against finite differences",
                       description="Build the recipe's model in float64 and compare its backward pass with "
                                   "central differences on a few samples; exit 1 if the error exceeds 1e-6.")
    p.add_argument("--recipe", type=str, default="mlp", help="recipe name or .toml path (default: mlp)")
    p.add_argument("--samples", type=int, default=4, help="number of random input samples (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="seed for the model and the samples (default: 0)")
    p.add_argument("--tolerance", type=float, default=1e-6, help="largest relative error allowed (default: 1e-6)")
    add_json_flag(p)
    p.set_defaults(func=cmd_gradcheck)


def cmd_gradcheck(args) -> int:
    from digitlab.gradcheck import gradcheck_recipe

    result = gradcheck_recipe(args.recipe, samples=args.samples, seed=args.seed)
    ok = result["max_relative_error"] <= args.tolerance
    result["tolerance"] = args.tolerance
    result["ok"] = ok
    text = (f"{result['recipe']}: max relative error {result['max_relative_error']:.3e} over "
            f"{result['parameters']} parameters ({'ok' if ok else 'FAILED'}, tolerance {args.tolerance:g})")
    emit(args, result, text)
    return 0 if ok else 1
