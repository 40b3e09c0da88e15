"""The `digitlab` command line.

    digitlab --help
    digitlab data info mnist
    digitlab train --recipe mlp --out runs/mlp
    digitlab predict runs/mlp/model.safetensors my-digit.jpg

This module only builds the parser and turns errors into one line on stderr. Each area owns its commands in
`digitlab.commands.<area>` (a `register(subparsers)` function), so the data, training, prediction, plotting
and web code keep their flags next to the code that uses them. Heavy imports (matplotlib, FastAPI) happen
inside the command functions, so `digitlab --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from digitlab import __version__
from digitlab.errors import DigitlabError

# Order here is the order in `digitlab --help`.
COMMAND_MODULES = (
    "digitlab.commands.data",
    "digitlab.commands.train",
    "digitlab.commands.predict",
    "digitlab.commands.plot",
    "digitlab.commands.serve",
    "digitlab.commands.sweep",
    "digitlab.commands.export",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digitlab",
        description="Train, understand and use handwritten-digit classifiers written from scratch in NumPy.",
    )
    parser.add_argument("--version", action="version", version=f"digitlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # an area not written yet must not break the others
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DigitlabError as exc:
        print(f"digitlab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("digitlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `digitlab ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
