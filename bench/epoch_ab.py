"""seed-004 epoch time of two source trees of digitlab, each measurement a fresh process, alternating.

    git archive main src | tar -x -C /tmp/before          # the tree to compare against
    .venv/bin/python bench/epoch_ab.py --before /tmp/before/src --after src --rounds 5
    .venv/bin/python bench/epoch_ab.py ... --threads 0    # the recipe's own BLAS thread choice

Each round runs one process per tree (the order alternating), which trains `--epochs` epochs of the real fit()
on the seed-004 recipe and reports each epoch's CPU time (time.process_time, robust on a busy machine) and wall
time (the training steps only, as `train_recipe` records them); a round's figure is the median of its epochs.
Printed: the medians, their ratio and the per-round ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist"


def worker(data_dir: str, epochs: int, threads: int) -> dict:
    """Train seed-004 for `epochs` epochs (no evaluation); {"cpu": [s per epoch], "wall": [s per epoch]}."""
    import digitlab.train as train

    recipe = dataclasses.replace(train.load_recipe("seed-004-mlp-relu"), epochs=epochs, threads=threads)
    data = dataclasses.replace(train.prepare_data(recipe, data_dir), test=None)
    rngs = train._rngs(recipe.seed)
    model = train.build_model(recipe, len(data.class_names), data.class_names, rngs)
    plan = train.Plan.of(recipe, len(data.train.labels))
    optimizer = train.build_optimizer(recipe, model.net, plan.total)
    ends = [time.process_time()]

    def at_step(state, _model):
        if state.batch == plan.per_epoch:
            ends.append(time.process_time())

    state = train.TrainState()
    train.fit(model, optimizer, data, recipe, state, rngs, run_dir=None, quiet=True, callback=at_step)
    return {"cpu": [b - a for a, b in zip(ends, ends[1:])], "wall": [row["seconds"] for row in state.history]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="the src/ folder of the tree to compare against")
    parser.add_argument("--after", default=str(REPO / "src"), help="the src/ folder of the tree measured")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per process (default: 2)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1; 0 = the recipe's choice)")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.data_dir, args.epochs, args.threads)))
        return 0
    if not args.before:
        parser.error("--before is required")
    trees = {"before": args.before, "after": args.after}
    figures = {name: {"cpu": [], "wall": []} for name in trees}
    for r in range(args.rounds):
        for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
            env = dict(os.environ, PYTHONPATH=str(Path(trees[name]).resolve()))
            out = subprocess.run([sys.executable, __file__, "--worker", "--epochs", str(args.epochs), "--threads",
                                  str(args.threads), "--data-dir", args.data_dir],
                                 env=env, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.splitlines()[-1])
            for clock in ("cpu", "wall"):
                figures[name][clock].append(statistics.median(result[clock]))
    print(f"`python bench/epoch_ab.py {' '.join(argv or sys.argv[1:])}`, load average at the end: "
          f"{' / '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    for clock in ("cpu", "wall"):
        before, after = figures["before"][clock], figures["after"][clock]
        ratios = [a / b for a, b in zip(after, before)]
        print(f"{clock}: before {statistics.median(before):.3f} s, after {statistics.median(after):.3f} s, "
              f"ratio {statistics.median(after) / statistics.median(before):.3f} (per round "
              f"{min(ratios):.3f}-{max(ratios):.3f}); rounds before {[round(v, 3) for v in before]}, "
              f"after {[round(v, 3) for v in after]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
