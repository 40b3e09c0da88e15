"""`digitlab sweep`: hyper-parameter sweeps on Optuna (the `digitlab[sweep]` extra), see `digitlab.sweep`.

    digitlab sweep sweep.toml --trials 20 --workers 2 --out sweeps/mlp      # run or continue the study
    digitlab sweep sweep.toml --storage postgresql://user@db/sweeps --out sweeps/here   # one of many machines
    digitlab sweep --status sweeps/mlp --json                             # the trials so far
"""

from __future__ import annotations

import sys
from pathlib import Path

from digitlab.commands._common import add_json_flag, emit


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="search recipe hyper-parameters with Optuna (pruning, many workers, many machines)",
        description="Run (or continue) the hyper-parameter sweep a spec file describes: each trial is a normal "
                    "run folder under OUT/trials/, the study lives in OUT/study.journal or --storage. Rerunning "
                    "the same command continues the study.",
    )
    p.add_argument("spec", nargs="?", type=str, default=None, metavar="SPEC.toml", help="the sweep spec")
    p.add_argument("--trials", type=int, default=None, help="trials in the study in total (default: the spec's)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default: 1)")
    p.add_argument("--storage", type=str, default=None, metavar="URL",
                   help="Optuna RDB storage shared by many machines, e.g. postgresql://user:pw@host/db "
                        "(default: a journal file in the sweep folder)")
    p.add_argument("--out", type=str, default=None,
                   help="sweep folder (default: sweeps/<spec name>; the same folder continues the sweep)")
    p.add_argument("--data-dir", type=str, default=None, help="folder holding the data set files")
    p.add_argument("--status", type=str, default=None, metavar="DIR",
                   help="print the study of the sweep folder DIR instead of running trials")
    p.add_argument("--quiet", action="store_true", default=False, help="no line per trial")
    add_json_flag(p)
    p.set_defaults(func=cmd_sweep, parser=p)


def cmd_sweep(args) -> int:
    try:
        import optuna  # noqa: F401  (the extra: optuna, tomli-w, a PostgreSQL driver)
        import tomli_w  # noqa: F401

        from digitlab import sweep
    except ModuleNotFoundError as exc:
        print(f"digitlab: error: sweeps need Optuna ({exc}); install it with: pip install 'digitlab[sweep]'",
              file=sys.stderr)
        return 1
    if args.status is not None:
        result = sweep.sweep_status(args.status, storage=args.storage)
        emit(args, result["trials"], sweep.status_table(result))
        return 0
    if args.spec is None:
        args.parser.error("give a SPEC.toml to run, or --status DIR")
    spec = sweep.load_spec(args.spec)
    out = Path(args.out) if args.out else Path("sweeps") / spec.path.stem
    try:
        result = sweep.run_sweep(spec, out, n_trials=args.trials, workers=args.workers, storage=args.storage,
                                 data_dir=args.data_dir, quiet=args.quiet or args.json)
    except KeyboardInterrupt:
        print(f"digitlab: sweep interrupted; rerun the same command to continue the study in {out}",
              file=sys.stderr)
        return 130
    text = sweep.status_table(result, top=10)
    if result.get("best_recipe"):
        text += f"\nbest recipe: {result['best_recipe']}  (digitlab train --recipe {result['best_recipe']})"
    emit(args, result, text)
    return 0
