"""`digitlab plot KIND ...`: PNG figures of a run, a model or a data set (see `digitlab.plots`).

    digitlab plot curves runs/mlp                          # -> runs/mlp/curves.png
    digitlab plot weights runs/softmax/model.safetensors   # -> runs/softmax/weights.png
    digitlab plot filters runs/cnn/model.safetensors       # -> runs/cnn/filters.png (first-layer kernels)
    digitlab plot activations runs/cnn/model.safetensors docs/examples/seven.jpg   # -> runs/cnn/activations.png
    digitlab plot confusion runs/mlp/model.safetensors --split test
    digitlab plot mistakes runs/mlp/model.safetensors --n 36 --out mistakes.png
    digitlab plot samples mnist --per-class 10             # -> ./samples-mnist.png
    digitlab plot augment mnist --recipe cnn               # -> ./augment-mnist.png (the recipe's augmentation)
    digitlab plot augment mnist --rotate 12 --scale 0.1 --translate 2
    digitlab plot augment fashion-mnist --recipe cnn       # cnn's [datasets.fashion-mnist]: no turns, flips
    digitlab plot curves runs/mlp --json                   # {"path": ..., "width": ..., "height": ...}

Model plots are written next to the model (its run folder) unless `--out` says otherwise; figures of the
test split keep the names `write_run_report` uses (confusion.png, mistakes.png), other splits get the split
in the name (confusion-train.png). matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from digitlab.commands._common import add_json_flag, emit

SPLITS = ("train", "test", "all")  # as digitlab.data.load
# `plot augment` flags: recipe field, type, help; defaults when no --recipe is given (issue 9's example)
AUGMENT_FLAGS = (("shift", int, "whole-pixel shift, pixels"), ("rotate", float, "rotation, degrees"),
                 ("scale", float, "zoom, fraction"), ("translate", float, "sub-pixel translation, pixels"),
                 ("flip", bool, "mirror left-right with probability 1/2"))
AUGMENT_DEFAULTS = {"shift": 0, "rotate": 12.0, "scale": 0.1, "translate": 2.0, "flip": False}
DATA_DIR_HELP = "folder holding the data set files (default: digitlab's usual lookup and cache)"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plot",
        help="draw learning curves, weights, CNN filters and feature maps, confusion matrices, mistakes, samples or augmentation as PNG",
        description="Draw a PNG figure of a run, a model or a data set.",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)

    c = kinds.add_parser("curves", help="loss and accuracy per epoch from RUN_DIR/history.csv",
                         description="Loss and accuracy per epoch, train and validation, from RUN_DIR/history.csv.")
    c.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run folder (or its history.csv)")
    _add_out(c, "RUN_DIR/curves.png")
    c.set_defaults(func=cmd_curves)

    w = kinds.add_parser("weights", help="linear templates or first-layer units of a model",
                         description="The ten 28x28 templates of a linear model (diverging colormap centred on 0) "
                                     "or a grid of first-layer units of a deeper model.")
    w.add_argument("model", metavar="MODEL", type=Path, help="a model file (model.safetensors)")
    w.add_argument("--units", type=int, default=64,
                   help="how many first-layer units to draw for a deeper model (default: 64)")
    _add_out(w, "weights.png next to MODEL")
    w.set_defaults(func=cmd_weights)

    k = kinds.add_parser("filters", help="first-layer kernels of a convolutional model",
                         description="The kernels of a CNN's first convolution layer, each on a diverging "
                                     "colormap centred on 0 and scaled to its own max |w|.")
    k.add_argument("model", metavar="MODEL", type=Path, help="a model file (model.safetensors)")
    k.add_argument("--n", type=int, default=64, help="how many filters to draw at most (default: 64)")
    _add_out(k, "filters.png next to MODEL")
    k.set_defaults(func=cmd_filters)

    v = kinds.add_parser("activations", help="feature maps of each conv layer for one picture",
                         description="The feature maps each convolution layer of a CNN computes for one picture "
                                     "(prepared like `digitlab predict` does: a photo or drawing of one digit).")
    v.add_argument("model", metavar="MODEL", type=Path, help="a model file (model.safetensors)")
    v.add_argument("image", metavar="IMAGE", type=Path, help="a picture of one digit (PNG, JPEG, ...)")
    v.add_argument("--n", type=int, default=32, help="feature maps to draw per layer at most (default: 32)")
    _add_out(v, "activations.png next to MODEL")
    v.set_defaults(func=cmd_activations)

    f = kinds.add_parser("confusion", help="confusion matrix (counts and row-normalised) of a model",
                         description="Confusion matrix of a model on a data split: counts and row-normalised.")
    f.add_argument("model", metavar="MODEL", type=Path, help="a model file (model.safetensors)")
    _add_data_flags(f)
    _add_out(f, "confusion.png next to MODEL (confusion-SPLIT.png for other splits)")
    f.set_defaults(func=cmd_confusion)

    m = kinds.add_parser("mistakes", help="the most confident mistakes of a model",
                         description="The most confident mistakes of a model, titled 'true 4 → pred 9 (0.98)'.")
    m.add_argument("model", metavar="MODEL", type=Path, help="a model file (model.safetensors)")
    m.add_argument("--n", type=int, default=36, help="how many mistakes to show (default: 36)")
    _add_data_flags(m)
    _add_out(m, "mistakes.png next to MODEL (mistakes-SPLIT.png for other splits)")
    m.set_defaults(func=cmd_mistakes)

    s = kinds.add_parser("samples", help="a grid of examples per class of a data set",
                         description="A grid with one row of examples per class, class names as row labels.")
    s.add_argument("dataset", metavar="DATASET", type=str, help="data set name: mnist, fashion-mnist, mnist-sample")
    s.add_argument("--per-class", type=int, default=10,
                   help="examples per class, the first ones of the split (default: 10)")
    s.add_argument("--split", type=str, default="train", choices=SPLITS,
                   help="which split to draw from (default: train)")
    s.add_argument("--data-dir", type=Path, default=None, metavar="DIR", help=DATA_DIR_HELP)
    _add_out(s, "./samples-DATASET.png")
    s.set_defaults(func=cmd_samples)

    a = kinds.add_parser("augment", help="originals next to augmented copies, as training sees them",
                         description="A grid: the first images of a split, each followed by copies augmented "
                                     "exactly as training does (shift, then rotate/scale/translate, then flip).")
    a.add_argument("dataset", metavar="DATASET", type=str, help="data set name: mnist, fashion-mnist, mnist-sample")
    a.add_argument("--recipe", type=str, default=None,
                   help="take the augmentation from this recipe (name or .toml); flags below override it")
    for name, kind, text in AUGMENT_FLAGS:
        how = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": kind}  # --flip / --no-flip
        default = ("on" if AUGMENT_DEFAULTS[name] else "off") if kind is bool else f"{AUGMENT_DEFAULTS[name]:g}"
        a.add_argument(f"--{name}", default=None, help=f"{text} (default: {default}, or the recipe's)", **how)
    a.add_argument("--n", type=int, default=8, help="how many originals (rows) to show (default: 8)")
    a.add_argument("--copies", type=int, default=5, help="augmented copies per original (default: 5)")
    a.add_argument("--seed", type=int, default=0, help="seed of the augmentation draws (default: 0)")
    a.add_argument("--split", type=str, default="train", choices=SPLITS,
                   help="which split to draw from (default: train)")
    a.add_argument("--data-dir", type=Path, default=None, metavar="DIR", help=DATA_DIR_HELP)
    _add_out(a, "./augment-DATASET.png")
    a.set_defaults(func=cmd_augment)


def _add_out(parser, default_text: str) -> None:
    parser.add_argument("--out", type=Path, default=None, help=f"PNG file to write (default: {default_text})")
    add_json_flag(parser)


def _add_data_flags(parser) -> None:
    parser.add_argument("--dataset", type=str, default=None,
                        help="data set to evaluate on (default: the one the model was trained on, else mnist)")
    parser.add_argument("--split", type=str, default="test", choices=SPLITS,
                        help="which split to evaluate on (default: test)")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR", help=DATA_DIR_HELP)


def _report(args, plot) -> int:
    emit(args, plot.as_dict(), f"wrote {plot.path} ({plot.width}×{plot.height} px)")
    return 0


def _model_out(args, name: str) -> Path:
    if args.out is not None:
        return args.out
    split = getattr(args, "split", "test")
    stem = name if split == "test" else f"{name}-{split}"
    return args.model.parent / f"{stem}.png"


def _dataset_of(model, requested: str | None) -> str:
    if requested:
        return requested
    recorded = (getattr(model, "metadata", None) or {}).get("dataset")
    if isinstance(recorded, dict):
        recorded = recorded.get("name")
    return recorded if isinstance(recorded, str) and recorded else "mnist"


def _load_split(dataset: str, split: str, data_dir):
    """(images uint8 [N,28,28], labels [N], class names) of one split of a data set."""
    import digitlab.data

    found = digitlab.data.load_dataset(dataset, data_dir)
    images, labels = found.split(split)
    return images, labels, found.class_names


def cmd_curves(args) -> int:
    from digitlab import plots

    run_dir = args.run_dir
    out = args.out or (run_dir if run_dir.is_dir() else run_dir.parent) / "curves.png"
    return _report(args, plots.plot_curves(run_dir, out))


def cmd_weights(args) -> int:
    import digitlab
    from digitlab import plots
    from digitlab.errors import ConfigError, DigitlabError

    if args.units < 1:
        raise ConfigError(f"--units must be at least 1, got {args.units}")
    model = digitlab.load(args.model)
    try:
        plot = plots.plot_weights(model, _model_out(args, "weights"), max_units=args.units)
    except DigitlabError as exc:
        raise type(exc)(f"{args.model}: {exc}") from None
    return _report(args, plot)


def _cnn_plot(args, draw):
    """Load MODEL, check --n, run draw(model); a model without conv layers is one clear error naming it."""
    import digitlab
    from digitlab.errors import ConfigError, DigitlabError

    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    model = digitlab.load(args.model)
    try:
        return _report(args, draw(model))
    except DigitlabError as exc:
        raise type(exc)(f"{args.model}: {exc}") from None


def cmd_filters(args) -> int:
    from digitlab import plots

    return _cnn_plot(args, lambda model: plots.plot_filters(model, _model_out(args, "filters"), max_filters=args.n))


def cmd_activations(args) -> int:
    from digitlab import plots
    from digitlab.images import load_image, to_mnist

    x, _ = to_mnist(load_image(args.image))  # (28, 28) uint8, as predict sees it; errors name the picture

    def draw(model):
        return plots.plot_activations(model, x, _model_out(args, "activations"), max_maps=args.n,
                                      title=f"feature maps for {args.image.name}")

    return _cnn_plot(args, draw)


def cmd_confusion(args) -> int:
    import digitlab
    from digitlab import plots

    model = digitlab.load(args.model)
    dataset = _dataset_of(model, args.dataset)
    images, labels, _ = _load_split(dataset, args.split, args.data_dir)
    plot = plots.plot_confusion(model, images, labels, _model_out(args, "confusion"), title=f"{dataset} {args.split}")
    return _report(args, plot)


def cmd_mistakes(args) -> int:
    import digitlab
    from digitlab import plots
    from digitlab.errors import ConfigError

    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    model = digitlab.load(args.model)
    images, labels, _ = _load_split(_dataset_of(model, args.dataset), args.split, args.data_dir)
    return _report(args, plots.plot_mistakes(model, images, labels, _model_out(args, "mistakes"), n=args.n))


def cmd_samples(args) -> int:
    from digitlab import plots
    from digitlab.errors import ConfigError

    if args.per_class < 1:
        raise ConfigError(f"--per-class must be at least 1, got {args.per_class}")
    images, labels, names = _load_split(args.dataset, args.split, args.data_dir)
    out = args.out or Path(f"samples-{args.dataset}.png")
    plot = plots.plot_samples(images, labels, out, per_class=args.per_class, class_names=names,
                              title=f"{args.dataset} ({args.split}): {args.per_class} examples per class")
    return _report(args, plot)


def cmd_augment(args) -> int:
    from digitlab import plots
    from digitlab.augment import check_limits
    from digitlab.errors import ConfigError
    from digitlab.recipes import load_recipe

    for flag in ("n", "copies"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    given = {name: getattr(args, name) for name, _, _ in AUGMENT_FLAGS if getattr(args, name) is not None}
    recipe = load_recipe(args.recipe, {"dataset": args.dataset}) if args.recipe else None  # its [datasets.X] too
    base = {name: getattr(recipe, name) for name in AUGMENT_DEFAULTS} if recipe else AUGMENT_DEFAULTS
    settings = {**base, **given}
    check_limits(settings["rotate"], settings["scale"], settings["translate"])
    if not 0 <= settings["shift"] < 14:
        raise ConfigError(f"--shift must be 0..13 pixels, got {settings['shift']}")
    images, _, _ = _load_split(args.dataset, args.split, args.data_dir)
    out = args.out or Path(f"augment-{args.dataset}.png")
    return _report(args, plots.plot_augment(images[: args.n], out, copies=args.copies, seed=args.seed, **settings))
