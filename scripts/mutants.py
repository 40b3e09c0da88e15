"""Mutation check: re-introduce realistic one-line bugs, one at a time, and show that a fast test catches each.

    .venv/bin/python scripts/mutants.py                 # all mutants (make mutants)
    .venv/bin/python scripts/mutants.py --list          # the table, nothing run
    .venv/bin/python scripts/mutants.py --only sched-step-plus-one adam-no-bias-correction
    .venv/bin/python scripts/mutants.py --allow-expected   # exit 0 when only "expected" mutants survive

Each mutant is (file under src/digitlab, the exact original snippet, its replacement, the pytest arguments
that must catch it). The source tree is copied to a temporary folder once; for every mutant one file of the
copy is rewritten, the tests run against the copy (PYTHONPATH points there; the working tree is never
touched) with a timeout, and the file is restored. A mutant is CAUGHT when the tests fail, SURVIVED when they
pass. The tests run as if full MNIST were absent (DIGITLAB_TEST_NO_MNIST=1): every bug here must be caught by
tests that need only the bundled sample. Before the mutants, each distinct test selection runs once on the
unmodified copy (a selection that already fails would make every mutant look caught).

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
T_SOURCES = "tests/test_sources.py"
T_WEB = "tests/test_web_api.py"
T_IMAGES = "tests/test_images.py"
T_TRAIN = "tests/test_train.py"
T_CLI = "tests/test_train_cli.py"
T_RESUME = ["tests/test_train.py::test_interrupt_then_resume_is_bit_identical",
            "tests/test_train_cli.py::test_ctrl_c_then_resume_from_cli_equals_an_uninterrupted_run"]
T_SQUARE = ["tests/test_train_wiring.py::test_gradients_of_a_network_of_square_layers", T_LAYERS]


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
      "return Adam(weight_decay=recipe.weight_decay)", "return Adam()", T_WIRING),
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
      "schedule(state.step - 1), quiet, bar)", "schedule(state.step), quiet, bar)", [T_WIRING, T_TRAIN]),
    # -- epoch order
    M("fit-order-sequential", "shuffle -> sequential", "train.py",
      "order=recipe.order, rng=rng,", 'order="sequential", rng=rng,', T_WIRING),
    M("batches-identity-permutation", "shuffle -> sequential", "data/dataset.py",
      'perm = rng.permutation(n) if order == "shuffle" else None',
      'perm = np.arange(n) if order == "shuffle" else None',
      [T_WIRING, T_DATASET]),
    M("same-order-every-epoch", "shuffle -> sequential", "train.py",
      "if state.batch == 0:\n                    state.start_epoch",
      "if state.batch == 0 and state.epoch == 0:\n                    state.start_epoch", T_WIRING),
    # -- train / validation split
    M("val-split-overlaps-by-one", "val split overlap", "data/dataset.py",
      "mask[val] = False", "mask[val[:-1]] = False", [T_WIRING, T_DATASET]),
    M("val-not-removed-from-train", "val split overlap", "train.py",
      "train, val = Split(train.images[tr], train.labels[tr]),", "train, val = Split(train.images, train.labels),",
      T_WIRING),
    # -- labels out of range in the losses (H2 adds the tests)
    M("loss-accepts-label-C", "label range in losses", "nn/losses.py",
      "as_unsigned.max() >= scores.shape[1]", "as_unsigned.max() > scores.shape[1]", T_LOSSES,
      expected="H2 (losses: out-of-range labels)"),
    # -- corrupt cache repaired from a mirror (H3 adds the test)
    M("corrupt-cache-counted-as-verified", "corrupt cache repair", "data/sources.py",
      "return expected is None or digest == expected", "return True", T_SOURCES,
      expected="H3 (corrupt cache repair)"),
    # -- web status codes (H4 converts the web tests to the sample model)
    M("web-not-an-image-422", "web status codes", "web/app.py",
      'raise HTTPException(415, "the uploaded bytes are not an image',
      'raise HTTPException(422, "the uploaded bytes are not an image', T_WEB,
      expected="H4 (web tests on sample_model, exact codes)"),
    M("web-content-length-precheck-off", "web status codes", "web/app.py",
      "if declared_size > limit:", "if declared_size > 1024 * limit:", T_WEB,
      expected="H4 (web tests on sample_model, pre-check vs streaming)"),
    # -- square layers: a missing transpose keeps every shape right
    M("linear-dx-missing-transpose", "square-layer transpose", "nn/layers.py",
      "return xp.matmul(dy, self.W.T, out=dx)", "return xp.matmul(dy, self.W, out=dx)", T_SQUARE),
    # -- images: local-contrast polarity (H4 adds the tests)
    M("local-polarity-ignored", "images polarity", "images.py",
      "if local != background.sign:", "if local == background.sign:", T_IMAGES,
      expected="H4 (images polarity)"),
    # -- resume
    M("resume-forgets-noise-rng", "resume", "train.py",
      'rngs["noise"].bit_generator.state = state.noise_rng', "pass", T_RESUME),
    M("resume-skips-one-batch-less", "resume", "train.py",
      "for _ in range(state.batch):", "for _ in range(state.batch - 1):", T_RESUME),
    M("resume-drops-optimizer-state", "resume", "train.py",
      '**{k[len("optim."):]: v for k, v in extra.items()', "**{k: v for k, v in extra.items()", T_RESUME),
    # -- classics
    M("ce-gradient-sign", "gradient sign", "nn/losses.py",
      "flat[target] -= z.dtype.type(1.0 / n)", "flat[target] += z.dtype.type(1.0 / n)", T_LOSSES),
    M("tanh-gradient-sign", "gradient sign", "nn/layers.py",
      "xp.subtract(1, dx, out=dx)", "xp.add(1, dx, out=dx)", T_LAYERS),
    M("dropout-no-rescale", "dropout scale", "nn/layers.py",
      "mask *= mask.dtype.type(1.0 / (1.0 - self.p))", "mask *= mask.dtype.type(1.0)", T_LAYERS),
    M("dropout-scale-by-p", "dropout scale", "nn/layers.py",
      "mask *= mask.dtype.type(1.0 / (1.0 - self.p))", "mask *= mask.dtype.type(1.0 / self.p)", T_LAYERS),
    M("adam-no-bias-correction", "Adam bias correction", "nn/optim.py",
      "k = lr * (1.0 - self.beta1) / (1.0 - self.beta1 ** self.t)", "k = lr", [T_OPTIM, T_WIRING]),
    M("adam-v-bias-correction-off", "Adam bias correction", "nn/optim.py",
      "(1.0 - self.beta2) / (1.0 - self.beta2 ** self.t) / (k * k)", "(1.0 - self.beta2) / (k * k)",
      [T_OPTIM, T_WIRING]),
    M("softmax-over-batch-axis", "softmax axis", "nn/losses.py",
      "p /= p.sum(axis=1, keepdims=True)", "p /= p.sum(axis=0, keepdims=True)", T_LOSSES),
]
# fmt: on

# Files other helpers rewrite on their branches (issue 10): snippets there will need re-pointing after merges.
REWRITTEN = {"train.py": "H1", "nn/layers.py": "H1", "nn/model.py": "H1", "nn/losses.py": "H2",
             "data/sources.py": "H3", "web/app.py": "H4", "images.py": "H4"}


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
    last = lines[-1] if lines else ""
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
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run (default 300)")
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

    rows, bad = [], 0
    with tempfile.TemporaryDirectory(prefix="digitlab-mutants-") as tmp:
        src_root = Path(tmp) / "src"
        shutil.copytree(REPO / "src", src_root, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        check_import(src_root)
        pkg = src_root / "digitlab"

        if not args.no_baseline:
            for selection in dict.fromkeys(m.tests for m in chosen):
                verdict, seconds, last = run_tests(src_root, selection, args.timeout)
                print(f"baseline {' '.join(selection)}: {verdict} ({seconds:.0f} s) {last}", flush=True)
                if verdict != "pass":
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
                note = f"{seconds:.0f} s"
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
    print(f"\n{caught} of {len(chosen)} mutants caught; {bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
