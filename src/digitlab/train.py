"""Training: `train_step()`, the `fit()` loop around it, `evaluate()`, and `train_recipe()` (CLI and tests).

    from digitlab.train import train_recipe, evaluate
    result = train_recipe("seed-004-mlp-relu", overrides={"epochs": 2}, out_dir="runs/s4")
    result.test_accuracy, result.epoch_seconds, result.model_path
    result = train_recipe(None, out_dir="runs/s4", resume=True)        # continue from its checkpoint
    evaluate(result.model, images, labels)   # {"accuracy", "loss", "per_class": [10 floats]}

A run folder holds config.json (the resolved recipe), history.csv (one row per epoch, rewritten atomically
after each), checkpoint.safetensors (weights + optimizer state + RNG states + position, every
`checkpoint_every` epochs and on Ctrl-C), model.safetensors, summary.json and the plots report.
Same recipe + same seed gives bit-identical weights; a resumed run gives the same weights as an
uninterrupted one. A diverged run (a non-finite loss, or an epoch whose mean loss is over DIVERGED_FACTOR
times the starting one) stops with a `TrainingError` and leaves the last good checkpoint.

Checkpoints live in digitlab.checkpoint, `reproduce` in digitlab.reproduce, `gradcheck_recipe` in
digitlab.gradcheck; they are re-exported here.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitlab.data.dataset import (
    Split,
    batches,
    load_dataset,
    normalize,
    sklearn_train_test_split_indices,
    train_val_split,
)
from digitlab.checkpoint import CHECKPOINT, TrainState, checkpoint_epoch, load_checkpoint, save_checkpoint
from digitlab.errors import ConfigError, TrainingError
from digitlab.fsutil import atomic_write_text
from digitlab.nn.layers import Dropout, Sequential
from digitlab.nn.losses import get_loss
from digitlab.nn.model import Classifier
from digitlab.nn.optim import SGD, Adam, make_schedule, onecycle_beta1
from digitlab.nn.shards import Shards, check_shardable
from digitlab.recipes import DEFAULT_RECIPE, Recipe, architecture_of, load_recipe, make_recipe

HISTORY_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                   "test_loss", "test_accuracy", "seconds")
MODEL = "model.safetensors"
EVAL_BATCH = 10_000
# Below this many multiply-adds per forward pass, train on one BLAS thread. Measured on 2 cores (median epoch,
# 1 vs 2 threads alternating): seed-000 (2 M) 0.16 vs 0.20 s, seed-002 (13 M) 0.57 vs 0.58 s, seed-004 (15 M)
# 1.33 vs 0.91 s.
SMALL_STEP_MACS = 12_000_000
# An epoch whose mean training loss exceeds this many times max(starting loss, log C) has diverged (a
# learning rate far too high: loss 7.7e19 at lr 1e9); healthy runs stay below their starting loss.
DIVERGED_FACTOR = 100.0


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where the checkpoint is and how to resume."""


# ------------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class RunData:
    """The arrays of one run: uint8 images [N, 28, 28] and integer labels per split (val/test may be None)."""

    name: str
    train: Split
    val: Split | None
    test: Split | None
    checksums: dict
    class_names: list


def prepare_data(recipe: Recipe, data_dir=None, quiet: bool = True) -> RunData:
    """Load the recipe's data set and cut it into train / validation / test exactly as the recipe says."""
    ds = load_dataset(recipe.dataset, data_dir, quiet=quiet)
    train, test = ds.train, ds.test
    if recipe.split == "pooled-sklearn":  # fetch_openml order (train then test), sklearn's train_test_split
        pooled = ds.split("all")
        tr, te = sklearn_train_test_split_indices(len(pooled.labels), recipe.test_fraction, recipe.split_seed)
        train, test = Split(pooled.images[tr], pooled.labels[tr]), Split(pooled.images[te], pooled.labels[te])
    val = None
    if recipe.val_size:
        if recipe.val_size >= len(train.labels):
            raise ConfigError(f"recipe {recipe.name!r}: val_size {recipe.val_size} >= {len(train.labels)} "
                              f"training images of {ds.name}")
        tr, va = train_val_split(train.labels, recipe.val_size, seed=_rngs(recipe.seed)["split"])
        train, val = Split(train.images[tr], train.labels[tr]), Split(train.images[va], train.labels[va])
    return RunData(ds.name, train, val, test, dict(ds.checksums), list(ds.class_names))


def _rngs(seed: int) -> dict[str, np.random.Generator]:
    """One seed -> independent generators: init (default_rng(seed) itself), split, order and noise."""
    split, order, noise = np.random.SeedSequence(seed).spawn(3)
    return {"init": np.random.default_rng(seed), "split": np.random.default_rng(split),
            "order": np.random.default_rng(order), "noise": np.random.default_rng(noise)}


# ------------------------------------------------------------------------------------------------ model
def build_model(recipe: Recipe, n_classes: int, class_names, rngs: dict, input_shape=(28, 28)) -> Classifier:
    """The recipe's network for images of `input_shape` (weights drawn from rngs["init"]) as a Classifier.

    The network is `architecture_of(recipe, n_classes)`: the recipe's `architecture` list, or for MLP
    recipes Flatten -> (Linear -> activation [-> Dropout]) per `hidden` width -> Linear(n_classes).
    """
    net = Sequential.from_spec(architecture_of(recipe, n_classes), input_shape=input_shape, rng=rngs["init"],
                               dtype=np.dtype(recipe.dtype))
    if net.output_shape != (n_classes,):
        raise ConfigError(f"recipe {recipe.name!r}: the architecture ends in outputs of shape {net.output_shape}, "
                          f"but the data set has {n_classes} classes")
    for layer in net.layers:
        if isinstance(layer, Dropout):  # dropout draws from its own stream, saved in checkpoints
            layer.rng = rngs["noise"]
    try:
        check_shardable(net, recipe.shards)
    except ConfigError as exc:
        raise ConfigError(f"recipe {recipe.name!r}: {exc}") from None
    return Classifier(net, recipe.loss, recipe.normalization, class_names, input_shape=list(input_shape))


def build_optimizer(recipe: Recipe, net: Sequential | None = None, total_steps: int = 0):
    """The recipe's optimizer; given the network, weight decay skips biases and BatchNorm parameters
    (unless the recipe sets decay_all). cycle_beta1: Adam's beta1 follows onecycle_beta1 over total_steps."""
    if recipe.optimizer == "adam":
        cycle = onecycle_beta1(total_steps) if recipe.cycle_beta1 else None
        opt = Adam(recipe.beta1, recipe.beta2, weight_decay=recipe.weight_decay, beta1_schedule=cycle)
    else:
        momentum = recipe.momentum if recipe.optimizer in ("momentum", "nesterov") else 0.0
        opt = SGD(momentum=momentum, nesterov=recipe.optimizer == "nesterov", weight_decay=recipe.weight_decay)
    if net is not None and not recipe.decay_all:
        opt.decay_mask = net.decay_flags()
    return opt


# ------------------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class Plan:
    """How many steps and epochs a recipe makes on n training images."""

    n: int
    batch_size: int  # the real batch size (n for full batch)
    per_epoch: int  # steps in a full epoch
    total: int  # optimizer steps in the whole run
    epochs: int

    @classmethod
    def of(cls, recipe: Recipe, n: int) -> "Plan":
        bs = min(recipe.batch_size or n, n)
        per_epoch = -(-n // bs)
        total = recipe.steps or recipe.epochs * per_epoch
        return cls(n, bs, per_epoch, total, -(-total // per_epoch))

    def steps_in(self, epoch: int) -> int:
        return min(self.per_epoch, self.total - epoch * self.per_epoch)


def _epoch_batches(recipe: Recipe, plan: Plan, train: Split, full_x, epoch: int, rng):
    """Iterator of (x, y) for one epoch; full batch reuses one normalised array."""
    if full_x is not None:
        return iter([(full_x, train.labels.astype(np.int64))])
    return batches(train.images, train.labels, plan.batch_size, order=recipe.order, rng=rng,
                   scheme=recipe.normalization, dtype=np.dtype(recipe.dtype), steps=plan.steps_in(epoch),
                   shift=recipe.shift, rotate=recipe.rotate, scale=recipe.scale, translate=recipe.translate,
                   flip=recipe.flip)


# ------------------------------------------------------------------------------------------------ fit
def train_step(model: Classifier, optimizer, x, y, lr: float, loss_fn=None, arrays=None,
               shards: Shards | None = None) -> tuple[float, int]:
    """One optimizer step on the batch (x, y) at learning rate lr; returns (mean loss, correct predictions).
    A non-finite loss returns before anything is updated (the caller stops the run). `arrays`: the network's
    (parameters(), grads()) lists, for a caller that makes them once (fit). `shards`: the network's
    data-parallel replicas (digitlab.nn.shards), when the recipe splits each batch."""
    net = model.net
    fold = optimizer.folds_lr  # plain SGD: scale the gradient once, then W -= dW in one pass
    loss, correct = (shards or Shards(net)).step(x, y, loss_fn or model.loss, lr if fold else 1.0)
    if not math.isfinite(loss):
        return loss, correct
    params, grads = arrays or (net.parameters(), net.grads())
    optimizer.step(params, grads, 1.0 if fold else lr)
    return loss, correct


def fit(model: Classifier, optimizer, data: RunData, recipe: Recipe, state: TrainState, rngs: dict,
        run_dir=None, quiet: bool = True, callback=None) -> TrainState:
    """Train `model` in place from `state` to the end of `recipe`; checkpoints and history go to run_dir.

    `callback(state, model)` runs after every step (progress display, tests); Ctrl-C or a KeyboardInterrupt
    from it saves a checkpoint and raises TrainingInterrupted.
    """
    from tqdm.auto import tqdm

    plan = Plan.of(recipe, len(data.train.labels))
    loss_fn = get_loss(recipe.loss, recipe.label_smoothing)  # the model's loss, smoothed for training
    schedule = _schedule(recipe, plan)
    augmenting = recipe.shift or recipe.rotate or recipe.scale or recipe.translate or recipe.flip
    one_batch = plan.per_epoch == 1 and not augmenting  # full batch, nothing to augment: normalise once
    full_x = normalize(data.train.images, recipe.normalization, recipe.dtype) if one_batch else None
    bar = tqdm(total=plan.total, initial=state.step, unit="step", leave=False, desc=recipe.name,
               disable=quiet or not sys.stderr.isatty())
    if state.order_rng is None:
        state.order_rng = rngs["order"].bit_generator.state
    arrays = model.net.parameters(), model.net.grads()   # the same arrays every step
    # A diverging run overflows a step or two before its loss turns non-finite; rather than a flood of
    # RuntimeWarnings, every step's loss is checked and a non-finite one stops training with a TrainingError.
    with _sigint_deferred() as ctrl_c, np.errstate(over="ignore", invalid="ignore"), bar, \
            _blas_threads(recipe, plan, model.net), Shards(model.net, recipe.shards) as shards:
        try:
            while state.epoch < plan.epochs:
                rngs["order"].bit_generator.state = state.order_rng  # replay this epoch's order
                epoch_batches = _epoch_batches(recipe, plan, data.train, full_x, state.epoch, rngs["order"])
                for _ in range(state.batch):  # resuming mid-epoch: skip the batches already done
                    next(epoch_batches)
                t0 = time.perf_counter() - state.seconds
                for x, y in epoch_batches:
                    lr = schedule(state.step)
                    loss, correct = train_step(model, optimizer, x, y, lr, loss_fn, arrays, shards)
                    if not math.isfinite(loss):
                        raise _diverged(f"loss became {'NaN' if math.isnan(loss) else 'infinite'} at epoch "
                                        f"{state.epoch + 1} step {state.step + 1}", lr, run_dir)
                    state.record(loss, correct, len(y))
                    state.seconds = time.perf_counter() - t0
                    bar.update(1)
                    if callback is not None:
                        callback(state, model)
                    if ctrl_c["hit"]:
                        raise KeyboardInterrupt
                _check_divergence(state, len(model.class_names), recipe.lr, run_dir)  # the peak lr
                row = _epoch_row(model, data, state, schedule(state.step - 1))
                state.history.append(row)
                state.next_epoch(rngs["order"])
                if not quiet:
                    bar.write(_epoch_line(row), file=sys.stderr)
                if run_dir is not None:
                    _write_history(run_dir, state.history)
                    if state.epoch % recipe.checkpoint_every == 0 or state.epoch == plan.epochs:
                        save_checkpoint(Path(run_dir) / CHECKPOINT, model, optimizer, state, rngs)
        except KeyboardInterrupt:
            raise _interrupted(model, optimizer, state, rngs, run_dir, hard=ctrl_c["hard"]) from None
    return state


def _blas_threads(recipe: Recipe, plan: Plan, net: Sequential):
    """Limit BLAS threads for the run: recipe.threads, or 1 when each step's matrix products are tiny or the
    batch is split into shards (each shard's thread makes its own products)."""
    from threadpoolctl import threadpool_limits

    macs = plan.batch_size * net.macs()  # per forward pass
    threads = recipe.threads or (1 if macs < SMALL_STEP_MACS or recipe.shards > 1 else None)
    return threadpool_limits(threads, user_api="blas") if threads else contextlib.nullcontext()


def _schedule(recipe: Recipe, plan: Plan):
    """step -> learning rate; "step" decays x0.1 after each third of the run."""
    name = {"step": "step_decay"}.get(recipe.schedule, recipe.schedule)
    extra = {"every": max(1, -(-plan.total // 3))} if name == "step_decay" else {}
    return make_schedule(name, recipe.lr, plan.total, recipe.warmup_steps, **extra)


def _epoch_row(model, data: RunData, state: TrainState, lr: float) -> dict:
    """The history row of the epoch just trained (evaluates val and test)."""
    row = {"epoch": state.epoch + 1, "step": state.step, "lr": lr, "train_loss": state.loss_sum / state.seen,
           "train_accuracy": state.correct / state.seen, "seconds": state.seconds}
    for split in ("val", "test"):
        part = getattr(data, split)
        if part is not None:
            result = evaluate(model, part.images, part.labels)
            row[f"{split}_loss"], row[f"{split}_accuracy"] = result["loss"], result["accuracy"]
    return row


def _epoch_line(row: dict) -> str:
    parts = [f"epoch {row['epoch']:>3}", f"loss {row['train_loss']:.4f}", f"acc {100 * row['train_accuracy']:.2f} %"]
    for split in ("val", "test"):
        if f"{split}_accuracy" in row:
            parts.append(f"{split} {100 * row[f'{split}_accuracy']:.2f} %")
    return " | ".join(parts + [f"{row['seconds']:.2f} s"])


def _check_divergence(state: TrainState, n_classes: int, lr: float, run_dir) -> None:
    """TrainingError when the epoch's mean loss is over DIVERGED_FACTOR x max(starting loss, log C)."""
    mean = state.loss_sum / max(state.seen, 1)
    scale = max(state.start_loss or 0.0, math.log(max(n_classes, 2)))
    if mean > DIVERGED_FACTOR * scale:
        raise _diverged(f"training diverged: the mean loss of epoch {state.epoch + 1} is {mean:.3g}, over "
                        f"{DIVERGED_FACTOR:g} times the starting loss {scale:.3g}", lr, run_dir)


def _diverged(what: str, lr: float, run_dir) -> TrainingError:
    ckpt = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    kept = (f"; the last good checkpoint is {ckpt} (epoch {checkpoint_epoch(ckpt)})"
            if ckpt is not None and ckpt.is_file() else "; no checkpoint was written before it")
    return TrainingError(f"{what} — learning rate {lr:g} is probably too high{kept}")


def _interrupted(model, optimizer, state, rngs, run_dir, hard: bool) -> KeyboardInterrupt:
    where = f"epoch {state.epoch + 1} step {state.step}"
    if run_dir is None:
        return TrainingInterrupted(f"training interrupted at {where} (no run folder, nothing saved)")
    path = Path(run_dir) / CHECKPOINT
    if hard:  # a second Ctrl-C may have stopped mid-step: keep the last consistent checkpoint instead
        return TrainingInterrupted(f"training stopped at {where}; kept the earlier checkpoint {path} — "
                                   f"resume with: digitlab train --resume {run_dir}")
    save_checkpoint(path, model, optimizer, state, rngs)
    return TrainingInterrupted(f"training interrupted at {where}; checkpoint saved to {path} — "
                               f"resume with: digitlab train --resume {run_dir}")


@contextlib.contextmanager
def _sigint_deferred():
    """Ctrl-C sets a flag the loop checks between steps (so the checkpoint is consistent); twice stops at once."""
    flags = {"hit": False, "hard": False}
    if threading.current_thread() is not threading.main_thread():
        yield flags
        return

    def handler(signum, frame):
        if flags["hit"]:
            flags["hard"] = True
            raise KeyboardInterrupt
        flags["hit"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flags
    finally:
        signal.signal(signal.SIGINT, previous)


# ------------------------------------------------------------------------------------------------ evaluate
def evaluate(model: Classifier, images, labels, batch_size: int = EVAL_BATCH) -> dict:
    """{"accuracy": 0..1, "loss": mean loss (the model's own), "per_class": accuracy per class (NaN if absent)}."""
    labels = np.asarray(labels).astype(np.int64, copy=False)
    n = len(labels)
    if n == 0 or len(images) != n:
        raise ConfigError(f"evaluate: {len(images)} images and {n} labels")
    predictions = np.empty(n, dtype=np.int64)
    loss_sum = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for lo in range(0, n, batch_size):
            scores = model.scores(images[lo:lo + batch_size])  # (b, C)
            predictions[lo:lo + batch_size] = scores.argmax(axis=1)
            loss, _ = model.loss(scores, labels[lo:lo + batch_size], out=scores)
            loss_sum += loss * len(scores)
    n_classes = len(model.class_names)
    hits = np.bincount(labels[predictions == labels], minlength=n_classes)  # (C,)
    totals = np.bincount(labels, minlength=n_classes)  # (C,)
    per_class = [float(h / t) if t else float("nan") for h, t in zip(hits, totals)]
    return {"accuracy": float(np.mean(predictions == labels)), "loss": loss_sum / n, "per_class": per_class}


def evaluate_file(model: Classifier, dataset: str | None = None, split: str = "test", data_dir=None) -> dict:
    """evaluate() on a data set split; a model trained on a pooled split is tested on its own held-out part."""
    meta = model.metadata
    name = dataset or meta.get("dataset") or "mnist"
    recipe_cfg = meta.get("recipe_config") or {}
    if name == meta.get("dataset") and recipe_cfg.get("split") == "pooled-sklearn":
        recipe = make_recipe({k: v for k, v in recipe_cfg.items()}, "model's recipe")
        data = prepare_data(dataclasses.replace(recipe, val_size=0), data_dir)
        part = data.test if split == "test" else data.train
    else:
        ds = load_dataset(name, data_dir, quiet=True)
        part = ds.split(split)
    result = evaluate(model, part.images, part.labels)
    result.update(dataset=name, split=split, n=len(part.labels))
    result["per_class"] = [None if math.isnan(a) else a for a in result["per_class"]]
    return result


# ------------------------------------------------------------------------------------------------ runs
@dataclass
class RunResult:
    recipe: Recipe
    run_dir: Path
    model: Classifier
    model_path: Path
    history: list
    test_accuracy: float | None
    val_accuracy: float | None
    epoch_seconds: list
    seconds: float  # training time (sum of epoch_seconds)

    def summary(self) -> dict:
        last = self.history[-1] if self.history else {}
        return {
            "recipe": self.recipe.name, "run_dir": str(self.run_dir), "model_path": str(self.model_path),
            "test_accuracy": self.test_accuracy, "val_accuracy": self.val_accuracy,
            "test_loss": last.get("test_loss"), "val_loss": last.get("val_loss"),
            "train_loss": last.get("train_loss"), "train_accuracy": last.get("train_accuracy"),
            "epochs": len(self.history), "steps": last.get("step"), "epoch_seconds": self.epoch_seconds,
            "seconds": self.seconds, "reported": self.recipe.reported,
            "reported_metric": self.recipe.reported_metric, "target": self.recipe.target,
        }


def default_run_dir(name: str, root="runs") -> Path:
    return Path(root) / f"{Path(name).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def train_recipe(name, overrides: dict | None = None, out_dir=None, data_dir=None, quiet: bool = True,
                 resume: bool = False, callback=None, report: bool = True, log=None) -> RunResult:
    """Train recipe `name` (+ overrides) into out_dir; `resume=True` continues the run in out_dir.
    `log(line)` gets one-line notes for a person (where a resumed run continues)."""
    if resume:
        if out_dir is None:
            raise ConfigError("resume needs the run folder to continue (out_dir)")
        recipe = _read_config(Path(out_dir))
    else:
        recipe = load_recipe(name or DEFAULT_RECIPE, overrides)
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir(recipe.name)
    if not resume:
        _refuse_to_overwrite(run_dir)  # before loading any data: fail fast, and never lose an earlier run
    data = prepare_data(recipe, data_dir, quiet=quiet)
    rngs = _rngs(recipe.seed)
    model = build_model(recipe, len(data.class_names), data.class_names, rngs, data.train.images.shape[1:])
    optimizer = build_optimizer(recipe, model.net, Plan.of(recipe, len(data.train.labels)).total)
    if resume:
        ckpt = run_dir / CHECKPOINT
        if not ckpt.is_file():
            raise TrainingError(f"cannot resume {run_dir}: no {CHECKPOINT} there (it is written after each epoch)")
        state = load_checkpoint(ckpt, model, optimizer, rngs)
        if log is not None:
            log(resume_line(run_dir, state, Plan.of(recipe, len(data.train.labels))))
    else:
        state = TrainState()
        atomic_write_text(run_dir / "config.json", json.dumps(dataclasses.asdict(recipe), indent=2) + "\n")
    fit(model, optimizer, data, recipe, state, rngs, run_dir, quiet=quiet, callback=callback)
    return _finish(recipe, data, model, state, run_dir, report)


def resume_line(run_dir, state: TrainState, plan: Plan) -> str:
    """'resuming runs/x at epoch 2 step 377 of 628' (1-based: the next epoch and step to run)."""
    if state.step >= plan.total:
        return f"{run_dir} is already complete ({plan.total} steps): nothing to resume"
    return (f"resuming {run_dir} at epoch {state.epoch + 1} step {state.step + 1} of {plan.total} "
            f"({plan.epochs} epochs of {plan.per_epoch} steps)")


def _refuse_to_overwrite(run_dir: Path) -> None:
    """A new run never replaces an earlier one's model or checkpoint (nothing is lost)."""
    taken = [name for name in (MODEL, CHECKPOINT) if (run_dir / name).exists()]
    if taken:
        raise ConfigError(f"{run_dir} already holds a run ({', '.join(taken)}): choose another --out, "
                          f"continue it with --resume {run_dir}, or remove it first")


def _read_config(run_dir: Path) -> Recipe:
    path = run_dir / "config.json"
    if not path.is_file():
        raise TrainingError(f"cannot resume {run_dir}: no config.json there (is it a digitlab run folder?)")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainingError(f"cannot resume {run_dir}: config.json is unreadable ({exc})") from None
    if not isinstance(values, dict):
        raise TrainingError(f"cannot resume {run_dir}: config.json is not a JSON object")
    return make_recipe(values, str(path))


def _finish(recipe: Recipe, data: RunData, model: Classifier, state: TrainState, run_dir: Path,
            report: bool) -> RunResult:
    last = state.history[-1]
    epoch_seconds = [row["seconds"] for row in state.history]
    result = RunResult(recipe, run_dir, model, run_dir / MODEL, state.history, last.get("test_accuracy"),
                       last.get("val_accuracy"), epoch_seconds, float(sum(epoch_seconds)))
    model.metadata.pop("checkpoint", None)  # the final model file carries no training state
    metrics = {k: v for k, v in result.summary().items() if k in (
        "test_accuracy", "val_accuracy", "test_loss", "val_loss", "train_loss", "train_accuracy", "epochs",
        "steps", "seconds")}
    model.save(result.model_path, recipe=recipe.name, recipe_config=dataclasses.asdict(recipe),
               dataset=data.name, dataset_checksums=data.checksums, seed=recipe.seed, metrics=metrics)
    atomic_write_text(run_dir / "summary.json", json.dumps(result.summary(), indent=2) + "\n")
    if report and data.test is not None:
        from digitlab.plots import write_run_report  # matplotlib loads only when a report is wanted

        write_run_report(run_dir, model, data.test.images, data.test.labels)
    return result


def _write_history(run_dir, history: list) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(Path(run_dir) / "history.csv", buf.getvalue())


# ------------------------------------------------------------------------------------------------ moved
from digitlab.gradcheck import gradcheck_recipe  # noqa: E402  (re-exports: these used to live here)
from digitlab.reproduce import reproduce  # noqa: E402

__all__ = ["CHECKPOINT", "MODEL", "Plan", "RunData", "RunResult", "TrainState", "TrainingInterrupted",
           "build_model", "build_optimizer", "evaluate", "evaluate_file", "fit", "gradcheck_recipe",
           "load_checkpoint", "prepare_data", "reproduce", "save_checkpoint", "train_recipe", "train_step"]
