"""Small helpers shared by the command modules."""

from __future__ import annotations

import json
import sys
from typing import Any


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print a machine-readable JSON result instead of prose")


def emit(args, result: Any, text: str | None = None) -> None:
    """Print `result` as JSON when `--json` was given, else the human `text` (if any)."""
    if getattr(args, "json", False):
        json.dump(result, sys.stdout, indent=2, default=_json_default)
        sys.stdout.write("\n")
    elif text is not None:
        print(text)


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
