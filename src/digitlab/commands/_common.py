"""Small helpers shared by the command modules."""

from __future__ import annotations

import json
import math
import sys
from typing import Any


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print a machine-readable JSON result instead of prose")


def emit(args, result: Any, text: str | None = None) -> None:
    """Print `result` as JSON when `--json` was given, else the human `text` (if any).

    NaN and ±inf (a diverged model's loss) become null: bare `NaN` is not JSON and breaks every strict parser.
    """
    if getattr(args, "json", False):
        json.dump(_plain(result), sys.stdout, indent=2, allow_nan=False, default=str)
        sys.stdout.write("\n")
    elif text is not None:
        print(text)


def _plain(obj):
    """`obj` with NumPy scalars/arrays as Python values and non-finite floats as None, ready for strict JSON."""
    import numpy as np

    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return _plain(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
