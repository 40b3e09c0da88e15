"""Mutation check: re-introduce realistic one-line bugs, one at a time, and show that a fast test catches each.

    .venv/bin/python scripts/mutants.py                 # all mutants (make mutants)
    .venv/bin/python scripts/mutants.py --list          # the table, nothing run
    .venv/bin/python scripts/mutants.py --only sched-step-plus-one adam-no-bias-correction
    .venv/bin/python scripts/mutants.py --allow-expected   # exit 0 when only "expected" mutants survive

Each mutant is (file under src/digitlab, the exact original snippet, its replacement, the pytest arguments
that must catch it). The source tree is copied to a temporary folder once; for every mutant one file of the
copy is rewritten, the tests run against the copy (PYTHONPATH points there; the working tree is never
touched) with a timeout, and the file is restored. A mutant is CAUGHT when the tests fail, SURVIVED when they
pass; the table names the first test that failed, so a mutant caught by an unrelated crash stands out.
The tests run with pytest -x (stop at the first failure) as if full MNIST were absent (DIGITLAB_TEST_NO_MNIST=1): every bug here must be caught by
tests that need only the bundled sample. Before the mutants, each distinct test selection runs once on the
unmodified copy (a selection that already fails would make every mutant look caught). Selections are
narrow (-k, node ids) and shared by the mutants of one area, so a full run takes about 13 minutes on 2 busy
cores.

The exit status is 1 when a mutant survived, a snippet no longer matches exactly once (the code moved: update
the table), or a baseline failed. The `expected` column names the change a survivor waits for (another branch
that adds the catching test); --allow-expected lets only those survive.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

T_WIRING = "tests/test_train_wiring.py"
T_OPTIM = "tests/test_init_optim.py"
T_DATASET = "tests/test_dataset.py"
T_LOSSES = "tests/test_losses.py"
T_LAYERS = "tests/test_layers.py"
T_CACHE = ["tests/test_data_faults.py", "tests/test_sources.py", "-k", "corrupt or checksum"]
T_WEB = ["tests/test_web_api.py", "-k", "bad_bodies or oversize or lying or cross_origin"]
T_IMAGES = ["tests/test_images.py", "-k", "polarity"]
T_TRAIN = "tests/test_train.py"
T_CLI = "tests/test_train_cli.py"
T_RESUME = ["tests/test_train.py::test_interrupt_then_resume_is_bit_identical",
            "tests/test_train_cli.py::test_ctrl_c_then_resume_from_cli_equals_an_uninterrupted_run"]
T_SQUARE = ["tests/test_train_wiring.py::test_gradients_of_a_network_of_square_layers", T_LAYERS]
T_ORDER = "tests/test_train_wiring.py::test_fit_visits_every_training_image_once_per_epoch_in_a_fresh_random_order"
T_DIVERGE = ["tests/test_resume.py", "-k", "diverged"]
T_SEED = "tests/test_resume.py::test_negative_seed_is_a_config_error"
T_DECAY = "tests/test_resume.py::test_weight_decay_applies_to_weights_only_unless_the_recipe_says_so"
T_CNN = ["tests/test_cnn.py", "-k", "conv2d or pooling or maxpool or batchnorm or whole_cnn"]
T_AUGMENT = ["tests/test_augment.py", "-k", "warp or turn or shift or zoom or fill or random_affine or drawn"]
T_ONECYCLE = [T_OPTIM, "-k", "onecycle"]
T_SMOOTH = [T_LOSSES, "-k", "smoothing"]
T_IDX = ["tests/test_idx_faults.py", "-k", "cap or zero_dimension"]
T_FIFO = ["tests/test_idx_faults.py", "tests/test_model_file_faults.py", "-k", "fifo or device"]
T_MODEL_NAN = ["tests/test_model_file_faults.py", "-k", "finite"]
T_ONNX = "tests/test_onnx.py::test_cnn_on_multichannel_images"
T_SKLEARN = "tests/test_sklearn.py::test_string_labels_probabilities_and_model"
T_SWEEP = "tests/test_sweep.py::test_val_loss_is_minimised"
T_SHARD_STEP = ["tests/test_shards.py", "-k", "sharded_step or replicas or parallel_threads or refused or error_in_a_part "
                "or stale"]
T_SHARD_FIT = ["tests/test_shards.py", "-k", "check_shards or splits_batches or train_command"]
T_INFER = ["tests/test_shards.py::test_map_chunks_keeps_the_order_and_runs_as_many_threads_as_asked",
           "tests/test_shards.py::test_chunked_scores_in_threads_are_the_rows_of_one_forward_pass",
           "tests/test_shards.py::test_inference_chunks_run_in_threads_and_give_the_same_scores"]
T_FEATURES = ["tests/test_web_api.py::test_a_cnn_answer_carries_its_first_conv_layers_feature_maps",
              "tests/test_cnn_plots.py", "-k", "feature_maps or scale_maps"]
T_CONFUSION = ["tests/test_plots.py", "-k", "confusion_errors or confusion_fractions"]
T_SHOW = ["tests/test_data_cli.py", "-k", "legible or name_each or long_class_names"]


@dataclass(frozen=True)
class Mutant:
    id: str
    kind: str  # the class of bug (issue 10 section 3, or a classic)
    file: str  # under src/digitlab
    original: str  # must occur exactly once in the file
    replacement: str
    tests: tuple  # pytest arguments (files or node ids)
    expected: str = ""  # non-empty: may survive until this lands (who adds the catching test)


def M(id, kind, file, original, replacement, tests, expected=""):
    return Mutant(id, kind, file, original, replacement, tuple([tests] if isinstance(tests, str) else tests),
                  expected)


# fmt: off
MUTANTS = [
    # -- recipe -> optimizer wiring
    M("adam-drops-weight-decay", "optimizer wiring", "train.py",
      "weight_decay=recipe.weight_decay, beta1_schedule=cycle)", "beta1_schedule=cycle)", T_WIRING),
    M("sgd-drops-weight-decay", "optimizer wiring", "train.py",
      'nesterov=recipe.optimizer == "nesterov", weight_decay=recipe.weight_decay)',
      'nesterov=recipe.optimizer == "nesterov", weight_decay=0.0)', T_WIRING),
    M("nesterov-flag-dropped", "optimizer wiring", "train.py",
      'nesterov=recipe.optimizer == "nesterov",', "nesterov=False,", T_WIRING),
    M("momentum-value-ignored", "optimizer wiring", "train.py",
      'momentum = recipe.momentum if recipe.optimizer in ("momentum", "nesterov") else 0.0',
      'momentum = 0.9 if recipe.optimizer in ("momentum", "nesterov") else 0.0', T_WIRING),
    M("momentum-never-on", "optimizer wiring", "train.py",
      'if recipe.optimizer in ("momentum", "nesterov") else 0.0', 'if recipe.optimizer == "nesterov" else 0.0',
      T_WIRING),
    M("weight-decay-doubled", "optimizer wiring", "nn/optim.py",
      "d = array_module(p).multiply(p, self.weight_decay, out=self._wd[i])",
      "d = array_module(p).multiply(p, 2 * self.weight_decay, out=self._wd[i])", [T_OPTIM, T_WIRING]),
    # -- learning-rate schedules, off by one
    M("sched-step-plus-one", "schedule off-by-one", "train.py",
      "lr = schedule(state.step)", "lr = schedule(state.step + 1)", T_WIRING),
    M("warmup-starts-at-zero", "schedule off-by-one", "nn/optim.py",
      "min(1.0, (step + 1) / warmup_steps)", "min(1.0, step / warmup_steps)", [T_OPTIM, T_WIRING]),
    M("step-decay-every-floor", "schedule off-by-one", "train.py",
      '"every": max(1, -(-plan.total // 3))', '"every": max(1, plan.total // 3 + 1)', T_WIRING),
    M("step-decay-early", "schedule off-by-one", "nn/optim.py",
      "float(lr) * gamma ** (step // every)", "float(lr) * gamma ** ((step + 1) // every)", [T_OPTIM, T_WIRING]),
    M("cosine-one-step-ahead", "schedule off-by-one", "nn/optim.py",
      "frac = min(step, total_steps) / total_steps", "frac = min(step + 1, total_steps) / total_steps",
      [T_OPTIM, T_WIRING]),
    M("history-lr-of-next-step", "schedule off-by-one", "train.py",
      "row = _epoch_row(model, data, state, schedule(state.step - 1))",
      "row = _epoch_row(model, data, state, schedule(state.step))", [T_WIRING, T_TRAIN]),
    # -- epoch order
    M("fit-order-sequential", "shuffle -> sequential", "train.py",
      "order=recipe.order, rng=rng,", 'order="sequential", rng=rng,', T_WIRING),
    M("batches-identity-permutation", "shuffle -> sequential", "data/dataset.py",
      'perm = rng.permutation(n) if order == "shuffle" else None',
      'perm = np.arange(n) if order == "shuffle" else None',
      [T_WIRING, T_DATASET]),
    M("order-rng-reseeded-each-epoch", "shuffle -> sequential", "train.py",
      "state.epoch, rngs[\"order\"])", "state.epoch, np.random.default_rng(recipe.seed))", T_WIRING),
    # -- train / validation split
    M("val-split-overlaps-by-one", "val split overlap", "data/dataset.py",
      "mask[val] = False", "mask[val[:-1]] = False", [T_WIRING, T_DATASET]),
    M("val-not-removed-from-train", "val split overlap", "train.py",
      "train, val = Split(train.images[tr], train.labels[tr]),", "train, val = Split(train.images, train.labels),",
      T_WIRING),
    # -- labels out of range in the losses
    M("loss-accepts-label-C", "label range in losses", "nn/losses.py",
      "as_unsigned.max() >= scores.shape[1]", "as_unsigned.max() > scores.shape[1]", T_LOSSES),
    # -- corrupt cache repaired from a mirror
    M("corrupt-cache-counted-as-verified", "corrupt cache repair", "data/sources.py",
      "return expected is None or digest == expected", "return True", T_CACHE),
    # -- web: exact status codes, the Content-Length pre-check vs the streaming count, other origins
    M("web-not-an-image-422", "web status codes", "web/app.py",
      'raise HTTPException(415, "not an image:', 'raise HTTPException(422, "not an image:', T_WEB),
    M("web-content-length-precheck-off", "web status codes", "web/app.py",
      "if declared_size > limit:", "if declared_size > 1024 * limit:", T_WEB),
    M("web-streaming-count-doubled", "web status codes", "web/app.py",
      "if seen > limit:", "if seen > 2 * limit:", T_WEB),
    M("web-origin-port-ignored", "web other origins", "web/app.py",
      'urlsplit(origin).netloc.lower() != headers.get("host", "").lower()',
      'urlsplit(origin).hostname != headers.get("host", "").split(":")[0].lower()', T_WEB),
    # -- square layers: a missing transpose keeps every shape right
    M("linear-dx-missing-transpose", "square-layer transpose", "nn/layers.py",
      "return xp.matmul(dy, self.W.T, out=dx)", "return xp.matmul(dy, self.W, out=dx)", T_SQUARE),
    # -- images: local-contrast polarity
    M("local-polarity-ignored", "images polarity", "images/preprocess.py",
      "if local != background.sign:", "if local == background.sign:", T_IMAGES),
    # -- resume
    M("resume-forgets-noise-rng", "resume", "checkpoint.py",
      'rngs["noise"].bit_generator.state = state.noise_rng', "pass", T_RESUME),
    M("resume-skips-one-batch-less", "resume", "train.py",
      "for _ in range(state.batch):", "for _ in range(state.batch - 1):", T_RESUME),
    M("resume-drops-optimizer-state", "resume", "checkpoint.py",
      '**{k[len("optim."):]: v for k, v in extra.items()', "**{k: v for k, v in extra.items()", T_RESUME),
    # -- training hardening (issue 10): the order state a checkpoint keeps, divergence, seeds, decay
    M("checkpoint-keeps-finished-epoch-order", "resume order state", "checkpoint.py",
      "self.order_rng = order_rng.bit_generator.state", "self.order_rng = self.order_rng",
      [T_ORDER, "tests/test_resume.py::test_resume_from_every_kind_of_checkpoint_is_bit_identical"]),
    M("divergence-only-non-finite", "divergence threshold", "train.py",
      "if mean > DIVERGED_FACTOR * scale:", "if not math.isfinite(mean):", T_DIVERGE),
    M("divergence-factor-dropped", "divergence threshold", "train.py",
      "if mean > DIVERGED_FACTOR * scale:", "if mean > scale:", T_DIVERGE),
    M("seed-check-wrong-field", "seed validation", "recipes/__init__.py",
      "(r.seed >= 0, ", "(r.steps >= 0, ", T_SEED),
    M("decay-flags-every-parameter", "weight decay on biases", "nn/layers.py",
      "return [n in layer.decay_names for layer", "return [n in layer.param_names for layer", T_DECAY),
    M("decay-all-flag-inverted", "weight decay on biases", "train.py",
      "if net is not None and not recipe.decay_all:", "if net is not None and recipe.decay_all:", T_DECAY),
    # -- CNN layers
    M("conv-col2im-offsets-swapped", "conv backward", "nn/layers.py",
      "dxpad[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]",
      "dxpad[:, j:j + s * (ho - 1) + 1:s, i:i + s * (wo - 1) + 1:s]", T_CNN),
    M("conv-dx-ignores-padding-offset", "conv backward", "nn/layers.py",
      "dx[:, :rows, :cols_] = dxpad[:, pt:pt + rows, pl:pl + cols_]",
      "dx[:, :rows, :cols_] = dxpad[:, :rows, :cols_]", T_CNN),
    M("conv-patch-strides-swapped", "conv kernel orientation", "nn/layers.py",
      "(sn, s * sh, s * sw, sh, sw, sc)", "(sn, s * sh, s * sw, sw, sh, sc)", T_CNN),
    M("maxpool-window-transposed", "maxpool gradient routing", "nn/layers.py",
      "xp.equal(win[:, :, a, :, b], y, out=hit)", "xp.equal(win[:, :, b, :, a], y, out=hit)", T_CNN),
    M("maxpool-ties-all-get-gradient", "maxpool gradient routing", "nn/layers.py",
      "hit &= free", "pass", T_CNN),
    M("maxpool2-ties-go-right", "maxpool gradient routing", "nn/layers.py",
      "r = xp.greater(right, left)", "r = xp.greater_equal(right, left)", T_CNN),
    M("maxpool2-low-row-wins-ties", "maxpool gradient routing", "nn/layers.py",
      "low = xp.greater(rowmax[:, :, 1], rowmax[:, :, 0])", "low = xp.greater_equal(rowmax[:, :, 1], rowmax[:, :, 0])",
      T_CNN),
    M("bn-momentum-swapped", "BatchNorm running statistics", "nn/layers.py",
      "self.running_mean[...] = mu * self.running_mean + (1 - mu) * mean",
      "self.running_mean[...] = (1 - mu) * self.running_mean + mu * mean", T_CNN),
    M("bn-running-var-biased", "BatchNorm running statistics", "nn/layers.py",
      "(1 - mu) * var * (m / max(m - 1, 1))", "(1 - mu) * var", T_CNN),
    M("bn-eval-variance-without-sqrt", "BatchNorm eval mode", "nn/layers.py",
      "inv = (self.gamma / xp.sqrt(self.running_var + self.eps))", "inv = (self.gamma / (self.running_var + self.eps))",
      T_CNN),
    # -- augmentation
    M("augment-rotation-sign", "augmentation", "augment.py",
      "xp.asarray(np.sin(angle) / scale, dt)", "xp.asarray(np.sin(-angle) / scale, dt)", T_AUGMENT),
    M("augment-fill-ignored", "augmentation", "augment.py",
      "padded = xp.full((b, h + 4, pw), fill, dtype=dt)", "padded = xp.zeros((b, h + 4, pw), dtype=dt)", T_AUGMENT),
    M("augment-degrees-as-radians", "augmentation", "augment.py",
      "angle = u[0] * math.radians(rotate)", "angle = u[0] * rotate", T_AUGMENT),
    # -- one-cycle and label smoothing
    M("onecycle-phase-end-off-by-one", "one-cycle phase", "nn/optim.py",
      "up_end = float(pct_start * total_steps) - 1.0", "up_end = float(pct_start * total_steps)", T_ONECYCLE),
    M("onecycle-beta1-in-phase-with-lr", "one-cycle phase", "nn/optim.py",
      "return _two_phases(high, low, high, total_steps, pct_start)",
      "return _two_phases(low, high, low, total_steps, pct_start)", T_ONECYCLE),
    M("smoothing-uniform-term-not-per-class", "label smoothing", "nn/losses.py",
      "z -= z.dtype.type(eps / (c * n))", "z -= z.dtype.type(eps / n)", T_SMOOTH),
    M("smoothing-loss-keeps-full-weight", "label smoothing", "nn/losses.py",
      "loss = (1.0 - eps) * loss - eps *", "loss = loss - eps *", T_SMOOTH),
    # -- data and model files
    M("idx-cap-off-by-one", "IDX declared-size cap", "data/idx.py",
      "if shape_bytes > max_bytes:", "if shape_bytes >= max_bytes:", T_IDX),
    M("idx-cap-ignores-empty-shapes", "IDX declared-size cap", "data/idx.py",
      "shape_bytes = math.prod(max(d, 1) for d in dims) * dtype.itemsize",
      "shape_bytes = math.prod(dims) * dtype.itemsize", T_IDX),
    M("open-regular-lets-fifo-through", "non-regular file refusal", "fsutil.py",
      "if not stat.S_ISREG(mode):", "if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):", T_FIFO),
    M("model-file-nan-check-misses-inf", "model-file NaN check", "nn/model.py",
      'if t.dtype.kind in "fc" and not np.isfinite(t).all():', 'if t.dtype.kind in "fc" and np.isnan(t).any():',
      T_MODEL_NAN),
    # -- interop and sweeps
    M("onnx-flatten-perm-to-nchw", "ONNX Flatten transpose", "export_onnx.py",
      "perm=[0, 2, 3, 1]", "perm=[0, 3, 1, 2]", T_ONNX),
    M("sklearn-predict-returns-indices", "sklearn classes_ mapping", "sklearn.py",
      "return self.classes_[self.model_.predict(X)]", "return self.model_.predict(X)", T_SKLEARN),
    M("sweep-best-of-wrong-direction", "sweep metric direction", "sweep.py",
      'sign = -1 if spec.direction == "maximize" else 1', 'sign = 1 if spec.direction == "maximize" else -1', T_SWEEP),
    M("sweep-val-loss-maximised", "sweep metric direction", "sweep.py",
      '"val_loss": "minimize"}', '"val_loss": "maximize"}', T_SWEEP),
    # -- data-parallel shards (nn/shards.py, Sequential.replica, fit's wiring)
    M("shards-remainder-to-every-part", "shard part sizes", "nn/shards.py",
      "(k < b % len(self.nets))", "(k <= b % len(self.nets))", T_SHARD_STEP),
    M("shards-equal-part-weights", "shard gradient scale", "nn/shards.py",
      "scale * (hi - lo) / b)", "scale / len(parts))", T_SHARD_STEP),
    M("shards-scale-dropped", "shard gradient scale", "nn/shards.py",
      "scale * (hi - lo) / b)", "(hi - lo) / b)", T_SHARD_STEP),
    M("shards-last-part-not-added", "shard gradient sum", "nn/shards.py",
      "for net, _, _ in parts[1:]:", "for net, _, _ in parts[1:-1]:", T_SHARD_STEP),
    M("shards-loss-weights-reversed", "shard parts order", "nn/shards.py",
      "in zip(results, parts)) / b", "in zip(results, parts[::-1])) / b", T_SHARD_STEP),
    M("shards-nets-in-reverse", "shard parts order", "nn/shards.py",
      "for net, lo, hi in zip(self.nets, edges[:-1]", "for net, lo, hi in zip(self.nets[::-1], edges[:-1]",
      T_SHARD_STEP),
    M("shards-count-first-part-only", "shard parts order", "nn/shards.py",
      "return loss, sum(correct for _, correct in results)", "return loss, results[0][1]", T_SHARD_STEP),
    M("shards-worker-error-swallowed", "worker-thread errors", "nn/shards.py",
      "results = [first] + [f.result() for f in futures]",
      "results = [first] + [f.result() for f in futures if f.exception() is None]", T_SHARD_STEP),
    M("replica-shares-gradients", "replica state", "nn/layers.py",
      'setattr(new, "d" + name, array_module(grad).zeros_like(grad))', 'setattr(new, "d" + name, grad)',
      T_SHARD_STEP),
    M("replica-copies-parameters", "replica state", "nn/layers.py",
      "new = copy.copy(self)", "new = copy.deepcopy(self)", T_SHARD_STEP),
    M("replica-without-workspace", "replica state", "nn/layers.py",
      "        net._own_workspace()\n        return net", "        return net", T_SHARD_STEP),
    M("linear-add-grads-keeps-rows", "replica state", "nn/layers.py",
      "self._dW_rows = None if other._dW_rows is None else self._dW_rows | other._dW_rows", "pass", T_SHARD_STEP),
    M("add-grads-overwrites", "shard gradient sum", "nn/layers.py",
      "            g += g_other", "            g[...] = g_other", T_SHARD_STEP),
    M("shards-empty-part-kept", "shard part sizes", "nn/shards.py",
      "edges[:-1], edges[1:]) if hi > lo]", "edges[:-1], edges[1:])]", T_SHARD_STEP),
    M("one-shard-scale-ignored", "shard gradient sum", "nn/shards.py",
      "return _forward_backward(self.nets[0], x, y, loss_fn, scale)",
      "return _forward_backward(self.nets[0], x, y, loss_fn, 1.0)", T_WIRING),
    M("shardable-check-from-three", "shard refusals", "nn/shards.py",
      "if n > 1 and blocked:", "if n > 2 and blocked:", T_SHARD_STEP),
    M("batchnorm-shardable", "shard refusals", "nn/layers.py",
      'not_shardable = "its statistics are over the whole batch"', 'not_shardable = ""', T_SHARD_STEP),
    M("build-model-skips-shard-check", "shard refusals", "train.py",
      "        check_shardable(net, recipe.shards)\n", "        pass\n", T_SHARD_FIT),
    M("recipe-accepts-zero-shards", "shard refusals", "recipes/__init__.py",
      "(1 <= r.shards <= 64,", "(0 <= r.shards <= 64,", T_SHARD_FIT),
    M("fit-ignores-recipe-shards", "shard wiring", "train.py",
      "Shards(model.net, recipe.shards) as shards", "Shards(model.net, 1) as shards", T_SHARD_FIT),
    M("fit-step-without-shards", "shard wiring", "train.py",
      "train_step(model, optimizer, x, y, lr, loss_fn, arrays, shards)",
      "train_step(model, optimizer, x, y, lr, loss_fn, arrays)", T_SHARD_FIT),
    M("blas-threads-not-limited-for-shards", "shard wiring", "train.py",
      "(1 if macs < SMALL_STEP_MACS or recipe.shards > 1 else None)", "(1 if macs < SMALL_STEP_MACS else None)",
      T_SHARD_FIT),
    M("cli-shards-flag-dropped", "shard wiring", "commands/train.py",
      '    "shards": (int, "split each batch', '    "_shards": (int, "split each batch', T_SHARD_FIT),
    # -- inference chunks in threads (nn/model.py)
    M("map-chunks-out-of-order", "chunk order", "nn/model.py",
      "return list(pool.map(fn, starts))", "return list(pool.map(fn, starts[::-1]))", T_INFER),
    M("map-chunks-threads-setting-ignored", "chunk threads", "nn/model.py",
      "threads = min(len(starts), threads or usable)", "threads = min(len(starts), usable)", T_INFER),
    M("map-chunks-default-one-thread", "chunk threads", "nn/model.py",
      "threads = min(len(starts), threads or usable)", "threads = min(len(starts), threads or 1)", T_INFER),
    M("map-chunks-two-threads-serial", "chunk threads", "nn/model.py",
      "if threads <= 1:", "if threads <= 2:", T_INFER),
    M("scores-last-chunk-dropped", "chunk order", "nn/model.py",
      "range(0, max(x.shape[0], 1), batch_size)", "range(0, max(x.shape[0] - batch_size, 1), batch_size)", T_INFER),
    # -- the page's feature maps, the confusion panel, data show labels
    M("scale-maps-over-all-maps", "feature-map scale", "plots.py",
      "lo, hi = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)",
      "lo, hi = maps.min(), maps.max()", T_FEATURES),
    M("scale-maps-flat-map-nan", "feature-map scale", "plots.py",
      "return (maps - lo) / np.where(hi > lo, hi - lo, 1.0)", "return (maps - lo) / (hi - lo)", T_FEATURES),
    M("web-features-rows-columns-swapped", "feature-map axes", "web/app.py",
      "return plots.scale_maps(maps.transpose(2, 0, 1))", "return plots.scale_maps(maps.transpose(2, 1, 0))",
      T_FEATURES),
    M("feature-maps-stop-at-first-conv", "feature-map layers", "plots.py",
      "last = sorted(convs)[: layers or len(convs)][-1]", "last = sorted(convs)[: layers or len(convs)][0]",
      T_FEATURES),
    M("confusion-diagonal-in-error-scale", "confusion diagonal", "plots.py",
      "errors = np.ma.masked_where(diagonal | (counts == 0), fractions)",
      "errors = np.ma.masked_where(counts == 0, fractions)", T_CONFUSION),
    M("confusion-error-scale-to-diagonal", "confusion diagonal", "plots.py",
      "worst = float(errors.max()) if errors.count() else 1.0", "worst = float(fractions.max())", T_CONFUSION),
    M("confusion-never-cells-coloured", "confusion diagonal", "plots.py",
      "errors = np.ma.masked_where(diagonal | (counts == 0), fractions)",
      "errors = np.ma.masked_where(diagonal, fractions)", T_CONFUSION),
    M("confusion-column-normalised", "confusion diagonal", "plots.py",
      "    fractions = row_normalize(counts)  # (C, C)", "    fractions = row_normalize(counts.T).T  # (C, C)",
      T_CONFUSION),
    M("confusion-diagonal-colour-off-diagonal", "confusion diagonal", "plots.py",
      "ax.imshow(np.ma.masked_where(~diagonal, np.ones((c, c)))",
      "ax.imshow(np.ma.masked_where(diagonal, np.ones((c, c)))",
      T_CONFUSION),
    M("show-label-on-its-tile", "data show labels", "commands/data.py",
      "centre = (pad + c * cell_w + tile_w / 2, pad + r * cell_h + tile_h + strip_h / 2)",
      "centre = (pad + c * cell_w + tile_w / 2, pad + r * cell_h + tile_h - strip_h / 2)", T_SHOW),
    M("show-label-of-position-not-class", "data show labels", "commands/data.py",
      "names = [str(class_names[int(label)]) for label in labels]",
      "names = [str(class_names[k % len(class_names)]) for k, label in enumerate(labels)]", T_SHOW),
    M("show-font-not-narrowed", "data show labels", "commands/data.py",
      "while fit > 8 and ImageFont.load_default(fit).getlength(name) > tile_w - 2:",
      "while fit > 8 and ImageFont.load_default(fit).getlength(name) > 4 * tile_w:", T_SHOW),
    M("show-strip-not-drawn", "data show labels", "commands/data.py",
      "sheet[y + tile_h : y + tile_h + strip_h, x : x + tile_w] = LABEL_STRIP", "pass", T_SHOW),
    M("samples-row-of-other-class", "data show labels", "plots.py",
      "picked = np.flatnonzero(labels == c)[:per_class]", "picked = np.flatnonzero(labels == c - 1)[:per_class]",
      ["tests/test_plots.py", "-k", "samples"]),
    # -- classics
    M("ce-gradient-sign", "gradient sign", "nn/losses.py",
      "flat[target] -= z.dtype.type((1.0 - eps) / n)", "flat[target] += z.dtype.type((1.0 - eps) / n)", T_LOSSES),
    M("tanh-gradient-sign", "gradient sign", "nn/layers.py",
      "xp.subtract(1, dx, out=dx)", "xp.add(1, dx, out=dx)", T_LAYERS),
    M("dropout-no-rescale", "dropout scale", "nn/layers.py",
      "mask *= mask.dtype.type(1.0 / (1.0 - self.p))", "mask *= mask.dtype.type(1.0)", T_LAYERS),
    M("dropout-scale-by-p", "dropout scale", "nn/layers.py",
      "mask *= mask.dtype.type(1.0 / (1.0 - self.p))", "mask *= mask.dtype.type(1.0 / self.p)", T_LAYERS),
    M("adam-no-bias-correction", "Adam bias correction", "nn/optim.py",
      "k = lr * (1.0 - b1) / (1.0 - b1 ** self.t)", "k = lr", [T_OPTIM, T_WIRING]),
    M("adam-v-bias-correction-off", "Adam bias correction", "nn/optim.py",
      "(1.0 - self.beta2) / (1.0 - self.beta2 ** self.t) / (k * k)", "(1.0 - self.beta2) / (k * k)",
      [T_OPTIM, T_WIRING]),
    M("softmax-over-batch-axis", "softmax axis", "nn/losses.py",
      "p /= p.sum(axis=1, keepdims=True)", "p /= p.sum(axis=0, keepdims=True)", T_LOSSES),
]
# fmt: on

# Files other helpers are rewriting on their branches: snippets there may need re-pointing after their merges.
REWRITTEN = {"nn/layers.py": "H9, H11", "train.py": "H11"}


def run_tests(src_root: Path, args: tuple, timeout: float) -> tuple[str, float, str]:
    """('pass' | 'fail' | 'timeout' | 'error', seconds, last output line) of pytest on `args` against src_root."""
    env = {**os.environ, "PYTHONPATH": str(src_root), "DIGITLAB_TEST_NO_MNIST": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, f"over {timeout:.0f} s"
    lines = (done.stdout + done.stderr).strip().splitlines()
    failed = [line.split(" - ")[0][len("FAILED "):] for line in lines if line.startswith("FAILED ")]
    last = f"by {failed[0]}" if failed else (lines[-1] if lines else "")  # the test that caught it, for the table
    # pytest: 0 all passed, 1 some failed, 5 nothing collected (all deselected), others: usage/internal errors
    verdict = {0: "pass", 1: "fail"}.get(done.returncode, "error")
    return verdict, time.perf_counter() - t0, last


def check_import(src_root: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(src_root), "PYTHONDONTWRITEBYTECODE": "1"}
    where = subprocess.run([sys.executable, "-c", "import digitlab; print(digitlab.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(src_root.resolve()):
        sys.exit(f"mutants: the tests would import digitlab from {where}, not from the copy in {src_root}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="print the table and exit")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per pytest run (default 180)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the runs on unmodified code")
    parser.add_argument("--allow-expected", action="store_true",
                        help="exit 0 when the only survivors are marked expected (waiting for another branch)")
    args = parser.parse_args(argv)

    ids = [m.id for m in MUTANTS]
    assert len(set(ids)) == len(ids), "duplicate mutant ids"
    chosen = MUTANTS
    if args.only:
        unknown = sorted(set(args.only) - set(ids))
        if unknown:
            parser.error(f"unknown mutant(s) {', '.join(unknown)}; see --list")
        chosen = [m for m in MUTANTS if m.id in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.id:36} {m.kind:24} {m.file:18} {' '.join(m.tests)}"
                  + (f"  [expected: {m.expected}]" if m.expected else ""))
        return 0

    rows, bad, started = [], 0, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="digitlab-mutants-") as tmp:
        src_root = Path(tmp) / "src"
        shutil.copytree(REPO / "src", src_root, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        check_import(src_root)
        pkg = src_root / "digitlab"

        if not args.no_baseline:
            for selection in dict.fromkeys(m.tests for m in chosen):
                verdict, seconds, last = run_tests(src_root, selection, args.timeout)
                print(f"baseline {' '.join(selection)}: {verdict} ({seconds:.0f} s) {last}", flush=True)
                if verdict != "pass" or " passed" not in last:  # all skipped would let every mutant survive
                    bad += 1
                    rows.append(("baseline", "-", "-", "BASELINE FAILS", f"{' '.join(selection)}: {last}"))

        for m in chosen:
            path = pkg / m.file
            text = path.read_text(encoding="utf-8")
            count = text.count(m.original)
            if count != 1:
                result, note = "NO MATCH", f"snippet found {count} times: update the table"
                bad += 1
            else:
                path.write_text(text.replace(m.original, m.replacement), encoding="utf-8")
                try:
                    verdict, seconds, last = run_tests(src_root, m.tests, args.timeout)
                finally:
                    path.write_text(text, encoding="utf-8")
                result = {"fail": "caught", "timeout": "caught (timeout)", "pass": "SURVIVED"}.get(verdict, "ERROR")
                note = f"{seconds:.0f} s" + (f" {last}" if result.startswith("caught") else "")
                if result == "SURVIVED":
                    if m.expected and args.allow_expected:
                        note += f"; expected until {m.expected}"
                    else:
                        bad += 1
                        note += f"; {m.expected}" if m.expected else ""
                elif result == "ERROR":
                    bad += 1
                    note += f"; {last}"
            rows.append((m.id, m.kind, m.file, result, note))
            print(f"{m.id}: {result} ({note})", flush=True)

    print()
    print("| mutant | class | file (rewritten by) | result | notes |")
    print("|---|---|---|---|---|")
    for mid, kind, file, result, note in rows:
        owner = f" ({REWRITTEN[file]})" if file in REWRITTEN else ""
        print(f"| {mid} | {kind} | {file}{owner} | {result} | {note} |")
    caught = sum(1 for r in rows if r[3].startswith("caught"))
    print(f"\n{caught} of {len(chosen)} mutants caught; {bad} problem(s); {time.perf_counter() - started:.0f} s in all")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
