"""`digitlab reproduce`: rerun the seed notebooks' recipes and judge our figure against theirs.

    from digitlab.reproduce import reproduce
    rows = reproduce(["seed-004-mlp-relu"], out_dir="runs/repro")   # one dict per recipe

A recipe's figure is judged against its `target`, or, when the recipe records a measured seed spread
(`[reported] spread`: our figure for seeds 0, 1, 2, ...; the notebook's figure is one draw of a seed-dependent
result), against that spread: ok when ours is at least the lowest figure of the spread.
"""

from __future__ import annotations

import sys
from pathlib import Path


def judge(recipe, ours: float) -> tuple[bool, float | None, str]:
    """(ok, the figure ours must reach, how it was judged) for a recipe's result `ours` (0..1)."""
    if recipe.spread:
        lo, hi = min(recipe.spread), max(recipe.spread)
        how = (f"within seeds 0-{len(recipe.spread) - 1} spread {100 * lo:.2f}-{100 * hi:.2f} % "
               f"(mean {100 * sum(recipe.spread) / len(recipe.spread):.2f} %)")
        return round(ours, 4) >= round(lo, 4), lo, how
    if recipe.target is None:
        return True, None, "no target"
    return round(ours, 4) >= recipe.target, recipe.target, "target"


def reproduce(names=None, out_dir=None, data_dir=None, quiet: bool = True, report: bool = False) -> list[dict]:
    """Run seed recipes (default: all `seed-*`); one row per recipe comparing ours with the notebook's."""
    from digitlab.recipes import recipe_names
    from digitlab.train import default_run_dir, train_recipe

    names = list(names) if names else [n for n in recipe_names() if n.startswith("seed-")]
    root = Path(out_dir) if out_dir is not None else default_run_dir("reproduce")
    rows = []
    for i, name in enumerate(names, 1):
        if not quiet:  # one line per recipe: its name while it trains, then its figure and time
            print(f"[{i}/{len(names)}] {Path(name).stem} ...", end=" ", file=sys.stderr, flush=True)
        result = train_recipe(name, None, out_dir=root / Path(name).stem, data_dir=data_dir, quiet=True,
                              report=report)
        r = result.recipe
        ours = result.test_accuracy if r.reported_metric == "test_accuracy" else result.val_accuracy
        ok, bar, how = judge(r, ours)
        rows.append({"recipe": r.name, "system": r.system, "metric": r.reported_metric, "reported": r.reported,
                     "reported_note": r.reported_note, "target": bar, "judged": how,
                     "spread": list(r.spread) or None, "seed": r.seed, "ours": ours, "ok": ok,
                     "seconds": result.seconds, "run_dir": str(result.run_dir)})
        if not quiet:
            print(outcome(rows[-1]), file=sys.stderr, flush=True)
    return rows


def outcome(row: dict) -> str:
    """'97.85 % test, ok (>= 97.50 %), 41.2 s': the end of a recipe's progress line."""
    metric = "test" if row["metric"] == "test_accuracy" else "val"
    bar = "" if row["target"] is None else f" (>= {100 * row['target']:.2f} %)"
    return f"{100 * row['ours']:.2f} % {metric}, {'ok' if row['ok'] else 'MISSED'}{bar}, {row['seconds']:.1f} s"
