"""MLP training time and accuracy: digitlab.sklearn.MLPClassifier vs scikit-learn's own MLPClassifier.

    .venv/bin/python bench/vs_sklearn.py                                  # load_digits, 5 rounds, 50 epochs
    .venv/bin/python bench/vs_sklearn.py --dataset mnist --epochs 5       # full MNIST (../shared/data/mnist)

Both sides: StandardScaler-scaled features, one hidden layer of --hidden units (ReLU), softmax output, Adam at
1e-3, batches of 200, exactly --epochs epochs (scikit-learn's convergence test is switched off with
n_iter_no_change so it runs them all), float64, each library's other defaults (scikit-learn keeps its L2
alpha=1e-4; digitlab has no weight decay by default). Each fit runs in its own fresh Python process with the
library's default threading (nothing in the environment is changed), the two sides alternate (the side that
goes first swaps every round), and random_state is the round number on both sides. Only `fit` is timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist"
SIDES = ("digitlab", "sklearn")


def load_data(name: str, data_dir: str):
    """(X_train, X_test, y_train, y_test), features standardised on the training part."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    if name == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    else:
        from digitlab.data import load_dataset

        ds = load_dataset("mnist", data_dir, quiet=True)
        (Xtr, ytr), (Xte, yte) = ds.train, ds.test
        Xtr, Xte = Xtr.reshape(len(Xtr), -1).astype(float), Xte.reshape(len(Xte), -1).astype(float)
    scaler = StandardScaler().fit(Xtr)
    return scaler.transform(Xtr), scaler.transform(Xte), ytr, yte


def worker(side: str, args) -> dict:
    """One fit in this process: {"seconds": fit time, "accuracy": test accuracy, "epochs": epochs run}."""
    Xtr, Xte, ytr, yte = load_data(args.dataset, args.data_dir)
    if side == "digitlab":
        from digitlab.sklearn import MLPClassifier

        est = MLPClassifier((args.hidden,), max_iter=args.epochs, random_state=args.seed)
    else:
        from sklearn.neural_network import MLPClassifier

        est = MLPClassifier((args.hidden,), max_iter=args.epochs, n_iter_no_change=10**9, random_state=args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's ConvergenceWarning: max_iter reached, as asked
        t0 = time.perf_counter()
        est.fit(Xtr, ytr)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "accuracy": float(est.score(Xte, yte)), "epochs": int(est.n_iter_)}


def run_side(side: str, args, seed: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--dataset", args.dataset, "--data-dir", args.data_dir,
           "--hidden", str(args.hidden), "--epochs", str(args.epochs), "--seed", str(seed)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="MNIST folder (for --dataset mnist)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds, one fit per side (default: 5)")
    parser.add_argument("--hidden", type=int, default=100, help="hidden units (default: 100)")
    parser.add_argument("--epochs", type=int, default=50, help="epochs per fit (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return 0
    import numpy as np
    import sklearn

    rows = []
    for i in range(args.rounds):
        order = SIDES if i % 2 == 0 else SIDES[::-1]
        result = {side: run_side(side, args, seed=i) for side in order}
        rows.append((i + 1, order[0], result["digitlab"], result["sklearn"]))
        print(f"round {i + 1}: digitlab {result['digitlab']['seconds']:.3f} s, "
              f"scikit-learn {result['sklearn']['seconds']:.3f} s", file=sys.stderr)
    dl = statistics.median(r[2]["seconds"] for r in rows)
    sk = statistics.median(r[3]["seconds"] for r in rows)
    print(f"`{' '.join(['python', 'bench/vs_sklearn.py', *(argv if argv is not None else sys.argv[1:])])}` on "
          f"{platform.processor() or platform.machine()}, numpy {np.__version__}, scikit-learn {sklearn.__version__}"
          f", {args.dataset}, hidden ({args.hidden},), {args.epochs} epochs\n")
    print("| round | first | digitlab fit s | scikit-learn fit s | ratio | digitlab acc | scikit-learn acc |")
    print("|---|---|---|---|---|---|---|")
    for i, first, d, s in rows:
        print(f"| {i} | {first} | {d['seconds']:.3f} | {s['seconds']:.3f} | {d['seconds'] / s['seconds']:.2f}x | "
              f"{100 * d['accuracy']:.2f} % | {100 * s['accuracy']:.2f} % |")
    acc_dl = statistics.mean(r[2]["accuracy"] for r in rows)
    acc_sk = statistics.mean(r[3]["accuracy"] for r in rows)
    print(f"| **median / mean** | | **{dl:.3f}** | **{sk:.3f}** | **{dl / sk:.2f}x** | **{100 * acc_dl:.2f} %** "
          f"| **{100 * acc_sk:.2f} %** |")
    paired = statistics.median(r[2]["seconds"] / r[3]["seconds"] for r in rows)
    print(f"\nmedian of the per-round ratios: {paired:.2f}x; accuracy is the mean over the rounds (random_state = "
          f"round - 1 on both sides)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
